"""How tensors become columns: the naming rules of the prediction log, planned once per shape.

* a ``[-1]`` input becomes one column named after the input;
* a tabular ``[-1, F]`` input becomes ``F`` columns, named by the version's feature names when
  given, else ``x_0..x_{F-1}`` (``<input>_0..`` when the model has several 2-D inputs);
* any other input ``[-1, d1, d2, ...]`` becomes one fixed-size-list column named after the
  input, holding each row's ``d1*d2*...`` elements in row-major order;
* every output becomes one column ``out_<output name>``: a plain column for ``[-1]`` and
  ``[-1, 1]`` outputs, a fixed-size list (row-major) for ``[-1, K]`` and wider ones. Which
  of the two follows the model's declared shape when the batch gives it
  (``PredictionBatch.output_shapes``, as the sidecar does): an output whose width varies
  (``[-1, -1]``) is a list even for a batch one wide, so a version's files never disagree
  on the column's type and read back together.

An input column's kind depends only on the input's rank, which requests cannot change; a
``[-1, -1]`` input has as many ``x_j`` columns as its rows are wide (each one value of the
input's type), so batches of different widths still read back together.

An output that is not one row per input row (a scalar, or a tensor whose first dimension is
fixed, such as a sum over the request) is the request's: the sidecar repeats it on each of the
request's rows before it is logged, so its column holds the whole output on every row.

Excluded features (``--log-exclude-features``) name feature columns or whole inputs; they are
dropped before anything is converted, so they never reach the disk.

Every column name must be unique: a feature named like a column every record has (``row``,
``timestamp``, ...) or like an output's column is refused (:class:`ColumnClash`), by the
sidecar already at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

#: Columns every record has, in file order, before the feature and output columns.
RESERVED_COLUMNS = (
    "timestamp",
    "request_id",
    "row",
    "trace_id",
    "model_name",
    "model_version",
    "arm",
    "status_code",
    "status_reason",
    "status_message",
    "latency_s",
    "batch_size",
)

OUTPUT_PREFIX = "out_"

TensorSpec = tuple[str, tuple[int, ...], str]  # name, shape after the batch dimension, dtype


class ColumnClash(ValueError):
    """Two columns of the prediction log would have the same name."""


@dataclass(frozen=True, slots=True)
class TensorColumns:
    """The columns one tensor becomes."""

    tensor: str
    kind: Literal["scalar", "split", "list"]
    #: Column names: one for ``scalar`` and ``list``, the kept features for ``split``.
    names: tuple[str, ...]
    #: For ``split``: the feature indices kept (all unless some are excluded).
    keep: tuple[int, ...]
    #: Elements per row (the fixed-size-list width).
    width: int
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """The columns of one batch shape: what the writer converts, in order."""

    inputs: tuple[TensorColumns, ...]
    outputs: tuple[TensorColumns, ...]

    def column_names(self) -> list[str]:
        """All tensor-derived column names, inputs first."""
        return [n for t in (*self.inputs, *self.outputs) for n in t.names]


def _names_for(
    tensor: str, width: int, feature_names: Sequence[str] | None, several: bool, strict: bool
) -> tuple[str, ...]:
    if feature_names is not None:
        if len(feature_names) == width:
            return tuple(str(n) for n in feature_names)
        if strict:
            raise ValueError(
                f"input {tensor!r} has {width} features but {len(feature_names)} feature names "
                "were given"
            )
    prefix = f"{tensor}_" if several else "x_"
    return tuple(f"{prefix}{j}" for j in range(width))


def _feature_names_by_input(
    feature_names: Sequence[str] | Mapping[str, Sequence[str]] | None,
    tabular: list[str],
    strict: bool,
) -> Mapping[str, Sequence[str]]:
    if feature_names is None or (not strict and len(tabular) != 1):
        return {}
    if isinstance(feature_names, Mapping):
        return feature_names
    if isinstance(feature_names, str):
        raise ValueError("feature_names must be a list of names, not one string")
    if len(tabular) != 1:
        raise ValueError(
            "a plain list of feature names needs exactly one 2-D input; the model has "
            f"{len(tabular)}: pass a mapping from input name to names"
        )
    return {tabular[0]: feature_names}


def plan_layout(
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    feature_names: Sequence[str] | Mapping[str, Sequence[str]] | None,
    exclude: frozenset[str],
    *,
    strict: bool = True,
    declared: Mapping[str, Sequence[int]] | None = None,
) -> Layout:
    """The columns for tensors of these shapes; raises :class:`ColumnClash` (a
    ``ValueError``) on clashing names.

    ``strict`` rejects feature names whose count differs from the input's width; rejected
    requests (whose inputs may have the wrong width) pass ``strict=False`` and get
    ``x_j`` names instead. ``declared`` holds the model's shape of outputs as a row holds
    them (-1 where a dim varies): an output it names is a plain column only when declared
    one value per row.
    """
    tabular = [name for name, shape, _ in inputs if len(shape) == 1]
    names_by_input = _feature_names_by_input(feature_names, tabular, strict)
    planned_inputs: list[TensorColumns] = []
    for name, shape, _ in inputs:
        if name in exclude:
            continue
        if len(shape) == 0:
            planned_inputs.append(TensorColumns(name, "scalar", (name,), (0,), 1, shape))
        elif len(shape) == 1:
            given = names_by_input.get(name)
            if given is not None and len(given) != shape[0] and exclude.intersection(given):
                # Not strict (a rejected request's input of another width): which column
                # would hold an excluded feature is unknown, so none of the input is logged.
                continue
            all_names = _names_for(name, shape[0], given, len(tabular) > 1, strict)
            keep = tuple(j for j, n in enumerate(all_names) if n not in exclude)
            planned_inputs.append(
                TensorColumns(
                    name, "split", tuple(all_names[j] for j in keep), keep, shape[0], shape
                )
            )
        else:
            width = math.prod(shape)
            planned_inputs.append(TensorColumns(name, "list", (name,), (), width, shape))
    planned_outputs: list[TensorColumns] = []
    for name, shape, _ in outputs:
        width = math.prod(shape)
        column = OUTPUT_PREFIX + name
        one_value = width == 1 and len(shape) <= 1
        declaration = None if declared is None else declared.get(name)
        if declaration is not None and not (
            len(declaration) <= 1 and all(d == 1 for d in declaration)
        ):
            one_value = False  # declared to vary or to be wider: a list, even one wide
        kind: Literal["scalar", "list"] = "scalar" if one_value else "list"
        planned_outputs.append(TensorColumns(name, kind, (column,), (), width, shape))
    layout = Layout(tuple(planned_inputs), tuple(planned_outputs))
    _check_unique(layout)
    return layout


def excludable_names(
    inputs: Sequence[TensorSpec],
    feature_names: Sequence[str] | Mapping[str, Sequence[str]] | None,
) -> list[str]:
    """What ``--log-exclude-features`` may name for inputs of these shapes: each input, then
    the feature columns of each tabular ``[-1, F]`` one (as :func:`plan_layout` names them)."""
    tabular = [name for name, shape, _ in inputs if len(shape) == 1]
    names_by_input = _feature_names_by_input(feature_names, tabular, strict=True)
    names: list[str] = []
    for name, shape, _ in inputs:
        names.append(name)
        if len(shape) == 1:
            names += _names_for(name, shape[0], names_by_input.get(name), len(tabular) > 1, True)
    return names


def _check_unique(layout: Layout) -> None:
    seen = set(RESERVED_COLUMNS)
    for column in layout.column_names():
        if column in seen:
            what = "a column every record has" if column in RESERVED_COLUMNS else "another column"
            raise ColumnClash(
                f"column {column!r} of the prediction log clashes with {what}; rename the "
                "feature (--feature-names, or the version's feature names) or the tensor, or "
                "leave it out of the log with --log-exclude-features"
            )
        seen.add(column)
        try:
            column.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"column name {column!r} of the prediction log is not valid UTF-8 text; "
                "rename the feature or the tensor"
            ) from None
