"""Turning the label column into class indices (classification) or floats (regression).

Classification labels are matched to the model's class list (probability-column order):
integer classes accept integer labels, integral floats and booleans (``true`` is 1); string
classes accept strings, and integers or booleans by their string form (``1``, ``true``);
boolean classes (a model's boolean label output) accept booleans, ``true``/``false`` text in
any letter case, and the numbers 1 and 0.
Dates, times, timestamps, durations and intervals are not class labels (INVALID_LABEL_TYPE);
nulls and NaN are missing labels (MISSING_LABELS); UNKNOWN_LABELS lists only the values that
match no class.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from controlplane.evaluation._errors import invalid
from modelplane.profiles import (
    boolean_spelling,
    category_strings,
    is_numeric_type,
    numeric_values,
)


def _no_nulls(column: pa.ChunkedArray, label: str) -> None:
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += pc.sum(pc.is_nan(column)).as_py() or 0
    if missing:
        raise invalid(
            "MISSING_LABELS",
            f"label column {label!r} has {missing} missing values (null or NaN); drop those "
            "rows or fill them before evaluating",
            label=label,
        )


def _not_integers(values: pa.Array) -> list[object]:
    """The distinct values of ``values`` that do not convert to an integer class: fractions,
    and numbers beyond int64."""
    if pa.types.is_floating(values.type):
        out_of_range = pc.or_(
            pc.greater_equal(values, pa.scalar(2.0**63, values.type)),
            pc.less(values, pa.scalar(-(2.0**63), values.type)),
        )
        bad = pc.or_(pc.not_equal(values, pc.floor(values)), out_of_range)
    elif pa.types.is_unsigned_integer(values.type):
        bad = pc.greater(values, pa.scalar(2**63 - 1, values.type))
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        bad = pc.invert(pc.match_substring_regex(values, r"^[+-]?[0-9]{1,18}$"))
    else:
        return []
    return pc.unique(pc.filter(values, bad)).to_pylist()


def _unknown(label: str, values: list[object], classes: Sequence[object]) -> Exception:
    shown = ", ".join(repr(v) for v in values[:5])
    return invalid(
        "UNKNOWN_LABELS",
        f"label column {label!r} holds values the model has no class for ({shown}); the "
        f"model's classes are {list(classes)[:20]}",
        label=label,
    )


def _as_class_type(column: pa.ChunkedArray, classes: Sequence[int] | Sequence[str]) -> pa.Array:
    combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(classes[0], str):
        # A CSV's True/False column reads as booleans: spelled as the model's classes spell
        # them (a model trained on pandas' "True"/"False" text), it matches them.
        return (
            category_strings(combined, boolean_spelling(str(c) for c in classes))
            if not is_numeric_type(combined.type)
            else pc.cast(combined, pa.string())
        )
    if pa.types.is_boolean(combined.type) or is_numeric_type(combined.type):
        return pc.cast(combined, pa.int64())
    if pa.types.is_dictionary(combined.type):
        combined = category_strings(combined)
    return pc.cast(combined, pa.int64())


@functools.cache
def _boolean_text() -> pa.Array:
    """The texts a boolean label may be written as, in ``classes`` order (built on first use:
    ``pa.array`` of a list loads pandas, half a second of every server start otherwise)."""
    return pa.array(["false", "true", "0", "1"], type=pa.string())


def _boolean_indices(column: pa.ChunkedArray, label: str, classes: Sequence[bool]) -> np.ndarray:
    """Each label's index in the boolean ``classes``."""
    combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    text = category_strings(combined)
    found = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(text)), value_set=_boolean_text())
    if found.null_count:
        unknown = pc.unique(pc.filter(combined, pc.is_null(found))).to_pylist()
        raise _unknown(label, unknown, classes)
    truth = np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64) % 2 == 1
    position = {c: i for i, c in enumerate(classes)}
    absent: list[object] = [v for v in (False, True) if v not in position and np.any(truth == v)]
    if absent:
        raise _unknown(label, absent, classes)
    return np.where(truth, position.get(True, -1), position.get(False, -1)).astype(np.int64)


def encode_classes(
    column: pa.ChunkedArray, label: str, classes: Sequence[int] | Sequence[str] | Sequence[bool]
) -> np.ndarray:
    """Each label's index in ``classes`` (int64); UNKNOWN_LABELS names values with no class."""
    _no_nulls(column, label)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_nested(kind) or pa.types.is_temporal(kind):
        raise invalid(
            "INVALID_LABEL_TYPE",
            f"label column {label!r} has type {column.type}; a class label is one value per "
            "row (a number, boolean or string), not a list, a record, a date, a time or a "
            "duration",
            label=label,
        )
    if classes and all(isinstance(c, bool) for c in classes):
        return _boolean_indices(column, label, classes)  # type: ignore[arg-type]
    try:
        values = _as_class_type(column, classes)  # type: ignore[arg-type]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        combined = column.combine_chunks()
        if pa.types.is_dictionary(combined.type):
            combined = category_strings(combined)
        failing = _not_integers(combined) or pc.unique(combined).to_pylist()
        raise _unknown(label, failing, classes) from None
    class_array = pa.array(list(classes), type=values.type)
    index = pc.index_in(values, value_set=class_array)
    if index.null_count:
        unknown = pc.unique(pc.filter(values, pc.is_null(index))).to_pylist()
        raise _unknown(label, unknown, classes)
    return np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int64)


def regression_targets(column: pa.ChunkedArray, label: str) -> np.ndarray:
    """The label column as float64; NON_NUMERIC_LABEL or MISSING_LABELS when it cannot be."""
    if not (is_numeric_type(column.type) or pa.types.is_boolean(column.type)):
        raise invalid(
            "NON_NUMERIC_LABEL",
            f"label column {label!r} has type {column.type}; a regressor needs numeric labels",
            label=label,
        )
    _no_nulls(column, label)
    values = numeric_values(column)
    if not np.all(np.isfinite(values)):
        raise invalid(
            "MISSING_LABELS", f"label column {label!r} has NaN or infinite values", label=label
        )
    return values
