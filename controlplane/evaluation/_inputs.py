"""From dataset columns to model inputs.

Which columns feed the model:

* a model with one input of shape ``[-1, F]`` takes a matrix of feature columns: the columns
  named in ``features`` when given (none of them the label, a slice or a protected column:
  FEATURES_OVERLAP); else the version's ``feature_names``, all of which the dataset must have
  (MISSING_FEATURES names those it lacks); else, when the version records no feature names,
  every column except the label, slice and protected columns, in dataset order (unless
  ``require_feature_names``: UNKNOWN_FEATURES);
* a model with several inputs, or one input of rank 1, takes for each input the column of that
  name (shape ``[-1]`` or ``[-1, 1]``).

Numeric, boolean and null values convert to the input's element type (nulls become NaN for
float inputs and are refused for integer inputs, as are values outside the integer type's
range: FEATURE_OUT_OF_RANGE); strings feed ``BYTES`` inputs only, plain or dictionary-encoded
(a pandas ``category`` column stored in Parquet), decoded to their text. A dictionary of any
other value type is refused: NON_STRING_FEATURE for a ``BYTES`` input, NON_NUMERIC_FEATURE
(asking for the plain values) for a numeric one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from controlplane.domain import TensorSpec
from controlplane.evaluation._errors import invalid
from modelplane.profiles import is_numeric_type, numeric_values

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class InputPlan:
    """For each model input, the dataset columns that feed it (several for a matrix input)."""

    bindings: list[tuple[TensorSpec, list[str]]]

    @property
    def feature_names(self) -> list[str]:
        """Every feature column, in the order the model sees them."""
        return [c for _, cols in self.bindings for c in cols]


def _missing(names: Sequence[str], columns: Sequence[str], what: str) -> None:
    present = set(columns)  # a set once: a dataset may have 100,000 feature columns
    absent = [n for n in names if n not in present]
    if absent:
        raise invalid(
            "MISSING_FEATURES",
            f"the dataset lacks {what} {absent} (dataset columns: {list(columns)})",
            missing=",".join(absent),
        )


def plan_inputs(
    inputs: list[TensorSpec],
    columns: Sequence[str],
    *,
    feature_names: Sequence[str],
    features: Sequence[str] | None,
    excluded: Sequence[str],
    require_feature_names: bool = False,
) -> InputPlan:
    """Bind model inputs to dataset columns by the rules of the module docstring."""
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        spec = inputs[0]
        if features:
            overlap = [n for n in features if n in excluded]
            if overlap:
                raise invalid(
                    "FEATURES_OVERLAP",
                    f"features {overlap} are also the label, a slice or a protected column; "
                    "a column cannot feed the model and be one of those",
                    columns=",".join(overlap),
                )
            chosen = list(features)
            _missing(chosen, columns, "the requested feature columns")
        elif feature_names:
            _missing(feature_names, columns, "the version's features")
            chosen = list(feature_names)
        elif require_feature_names:
            raise invalid(
                "UNKNOWN_FEATURES",
                f"input {spec.name!r} takes a matrix of features but the version records no "
                "feature names, so which columns feed it is unknown",
                input=spec.name,
            )
        else:
            chosen = [c for c in columns if c not in excluded]
        width = spec.shape[1]
        if width > 0 and len(chosen) != width:
            absent = [n for n in feature_names if n not in columns]
            hint = f"; the version's features {absent} are missing" if absent else ""
            raise invalid(
                "MISSING_FEATURES" if absent else "FEATURE_COUNT_MISMATCH",
                f"input {spec.name!r} takes {width} features but {len(chosen)} columns were "
                f"chosen ({chosen[:20]}){hint}",
                input=spec.name,
            )
        if not chosen:
            raise invalid("MISSING_FEATURES", "the dataset has no feature column")
        return InputPlan([(spec, chosen)])
    for spec in inputs:
        if not (len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1)):
            raise invalid(
                "UNSUPPORTED_MODEL_INPUT",
                f"input {spec.name!r} has shape {spec.shape}; with several inputs each must be "
                "one column ([-1] or [-1, 1])",
                input=spec.name,
            )
    _missing([s.name for s in inputs], columns, "columns for the model inputs")
    return InputPlan([(s, [s.name]) for s in inputs])


def check_types(plan: InputPlan, schema: pa.Schema) -> None:
    """NON_NUMERIC_FEATURE / NON_STRING_FEATURE when a column cannot feed its input."""
    for spec, cols in plan.bindings:
        for name in cols:
            type_ = schema.field(name).type
            if spec.datatype == "BYTES" and pa.types.is_null(type_):
                # Every cell empty (a CSV reads such a column as nulls): missing, not numbers.
                raise invalid(
                    "MISSING_VALUES",
                    f"column {name!r} has only missing values but input {spec.name!r} (BYTES) "
                    "needs a string in every row",
                    feature=name,
                )
            if spec.datatype == "BYTES":
                ok = _is_text(type_)
                reason, need = "NON_STRING_FEATURE", "string"
            else:
                ok = is_numeric_type(type_) or pa.types.is_boolean(type_) or pa.types.is_null(type_)
                reason, need = "NON_NUMERIC_FEATURE", "numeric or boolean"
            if not ok and _is_numeric_dictionary(type_) and spec.datatype != "BYTES":
                # Numbers stored as categories (a pandas ``category`` column): say so, rather
                # than "encode it" about a column that holds numbers.
                raise invalid(
                    reason,
                    f"column {name!r} is categorical (dictionary-encoded {type_.value_type} "
                    f"values, type {type_}) but input {spec.name!r} ({spec.datatype}) takes "
                    f"plain {need} values; store it as {type_.value_type} rather than as "
                    "categories before evaluating",
                    feature=name,
                )
            if not ok:
                raise invalid(
                    reason,
                    f"column {name!r} has type {type_} but input {spec.name!r} ({spec.datatype}) "
                    f"needs {need} values; encode it before evaluating",
                    feature=name,
                )


def _is_numeric_dictionary(type_: pa.DataType) -> bool:
    return pa.types.is_dictionary(type_) and (
        is_numeric_type(type_.value_type) or pa.types.is_boolean(type_.value_type)
    )


def _is_text(type_: pa.DataType) -> bool:
    """Strings, plain or dictionary-encoded (a pandas ``category`` of strings)."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _column(spec: TensorSpec, name: str, column: pa.ChunkedArray) -> np.ndarray:
    if spec.datatype == "BYTES":
        if pa.types.is_dictionary(column.type):
            # Decoded first: a null among the dictionary's values is no null of the indices.
            column = pc.cast(column, column.type.value_type)
        if column.null_count:
            raise invalid("MISSING_VALUES", f"column {name!r} has nulls", feature=name)
        return np.asarray(column.to_pylist(), dtype=object)
    target = _NUMPY_TYPES.get(spec.datatype)
    if target is None:
        raise invalid(
            "UNSUPPORTED_MODEL_INPUT",
            f"input {spec.name!r} has element type {spec.datatype}",
            input=spec.name,
        )
    if np.issubdtype(target, np.floating):
        return numeric_values(column).astype(target, copy=False)
    if column.null_count:
        raise invalid(
            "MISSING_VALUES",
            f"column {name!r} has {column.null_count} nulls but input {spec.name!r} is "
            f"{spec.datatype}, which has no missing value",
            feature=name,
        )
    if pa.types.is_float16(column.type):
        # Arrow has no halffloat kernel for min_max; every float16 is exact as a float32.
        column = pc.cast(column, pa.float32())
    if np.issubdtype(target, np.integer) and not pa.types.is_boolean(column.type) and len(column):
        info = np.iinfo(np.dtype(target))
        low, high = pc.min_max(column).values()
        if low.as_py() < info.min or high.as_py() > info.max:
            raise invalid(
                "FEATURE_OUT_OF_RANGE",
                f"column {name!r} feeds input {spec.name!r} ({spec.datatype}, values "
                f"{info.min} to {info.max}) but holds values from {low.as_py()} to "
                f"{high.as_py()}",
                feature=name,
            )
    try:
        as_int = pc.cast(column, pa.from_numpy_dtype(target))
    except pa.ArrowInvalid as err:
        raise invalid(
            "NON_INTEGER_FEATURE",
            f"column {name!r} feeds integer input {spec.name!r} but holds non-integer values",
            feature=name,
        ) from err
    return np.asarray(as_int.to_numpy(zero_copy_only=False)).astype(target)


def build_feeds(plan: InputPlan, chunk: pa.Table) -> dict[str, np.ndarray]:
    """The input arrays for a slice of the dataset."""
    feeds: dict[str, np.ndarray] = {}
    n = chunk.num_rows
    for spec, cols in plan.bindings:
        arrays = [_column(spec, c, chunk.column(c)) for c in cols]
        if len(spec.shape) == 1:
            feeds[spec.name] = arrays[0]
            continue
        matrix = np.empty((n, len(cols)), dtype=arrays[0].dtype)
        for i, values in enumerate(arrays):
            matrix[:, i] = values
        feeds[spec.name] = matrix
    return feeds
