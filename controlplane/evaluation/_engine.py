"""One evaluation: run a model over a labelled dataset and compute metrics, slices, fairness
and data validation in one pass."""

from __future__ import annotations

import hashlib
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from controlplane.domain import Signature
from controlplane.evaluation._classification import classification_metrics
from controlplane.evaluation._errors import EvaluationWarning, invalid
from controlplane.evaluation._fairness import FairnessReport, fairness_report
from controlplane.evaluation._grouping import Groups, cap_groups, group_rows
from controlplane.evaluation._inputs import InputPlan, check_types, plan_inputs
from controlplane.evaluation._labels import encode_classes, regression_targets
from controlplane.evaluation._model import (
    ModelGraph,
    check_signature,
    open_session,
    plan_outputs,
    session_signature,
)
from controlplane.evaluation._predict import (
    INFERENCE_SHARE,
    RunControl,
    probabilities,
    resolve_classes,
    run_chunks,
)
from controlplane.evaluation._regression import regression_metrics
from controlplane.evaluation._report import EvaluationReport, SliceReport
from controlplane.evaluation._validation import ValidationThresholds, validate
from modelplane.profiles import (
    BaselineProfile,
    check_unique_columns,
    detect_format,
    read_csv_text,
    read_table,
)

TASKS = ("classification", "regression")
MAX_SLICES = 50
#: Rows per model run when the caller chooses none: a tenth of the dataset (:data:`CHUNKS`
#: runs), so that progress moves in steps and a stop is seen between runs, but at least
#: MIN_CHUNK_ROWS (each run has a fixed cost) and at most MAX_CHUNK_ROWS (memory).
CHUNKS = 10
MIN_CHUNK_ROWS = 1_024
MAX_CHUNK_ROWS = 65_536

MetricResult = tuple[dict[str, float | None], list[EvaluationWarning]]
Metrics = Callable[[np.ndarray, str], MetricResult]


def chunk_rows_for(rows: int) -> int:
    """The rows per model run for a dataset of ``rows`` rows (see :data:`CHUNKS`)."""
    return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, -(-rows // CHUNKS)))


class _Steps:
    """The metrics' share of the progress, after the model run's: one step per pass over the
    rows (the overall metrics, each protected attribute, each slice column). :meth:`check`,
    called between groups, ends the evaluation as soon as ``control`` is stopped."""

    def __init__(
        self, total: int, progress: Callable[[float], None] | None, control: RunControl | None
    ) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.control = control

    def check(self) -> None:
        """Raise why the evaluation was stopped, if it was."""
        if self.control is not None:
            self.control.check()

    def step(self) -> None:
        """One pass done: check, and report progress short of 1 (the end reports that)."""
        self.done += 1
        self.check()
        if self.progress is not None and self.done < self.total:
            self.progress(INFERENCE_SHARE + (1.0 - INFERENCE_SHARE) * self.done / self.total)


def _require_columns(
    table: pa.Table, label: str, slices: Sequence[str], protected: Sequence[str]
) -> None:
    check_unique_columns(table)
    columns = table.column_names
    present = set(columns)
    if label not in present:
        raise invalid(
            "MISSING_LABEL_COLUMN",
            f"label column {label!r} is not in the dataset (columns: {columns})",
            label=label,
        )
    for names, reason, what in (
        (slices, "MISSING_SLICE_COLUMN", "slice"),
        (protected, "MISSING_PROTECTED_COLUMN", "protected attribute"),
    ):
        absent = [n for n in names if n not in present]
        if absent:
            raise invalid(
                reason,
                f"{what} columns {absent} are not in the dataset (columns: {columns})",
                missing=",".join(absent),
            )


def _groups(table: pa.Table, name: str, reason: str) -> Groups:
    try:
        return group_rows(table.column(name))
    except TypeError:
        raise invalid(
            reason,
            f"column {name!r} has type {table.column(name).type}; group by a string, boolean, "
            "numeric or date column",
            column=name,
        ) from None


def _slices(
    table: pa.Table,
    columns: Sequence[str],
    metrics: Metrics,
    limit: int,
    warnings: list[EvaluationWarning],
    steps: _Steps,
) -> dict[str, list[SliceReport]]:
    out: dict[str, list[SliceReport]] = {}
    for column in columns:
        steps.check()
        groups, pooled = cap_groups(_groups(table, column, "INVALID_SLICE_COLUMN"), limit)
        if pooled:
            warnings.append(
                EvaluationWarning(
                    "SLICES_POOLED",
                    f"slice column {column!r} has more than {limit} values; the {pooled} "
                    "smallest are pooled into the slice '<other>'",
                    f"slice:{column}",
                )
            )
        reports = []
        for value, rows in zip(groups.names, groups.rows, strict=True):
            steps.check()
            values, found = metrics(rows, f"slice:{column}={value}")
            warnings.extend(found)
            reports.append(SliceReport(column, value, len(rows), values))
        out[column] = reports
        steps.step()
    return out


_BOOLEAN_SPELLINGS = {"true": True, "1": True, "false": False, "0": False}
#: An integral number as text: ``1``, ``-1``, ``+1``, ``1.0``, ``1.``, ``01``.
_INTEGRAL_TEXT = re.compile(r"([+-]?[0-9]+)(?:\.0*)?")


def _integral(value: Any) -> int | None:
    """``value`` as an integer when it is one, or a float or text that spells one (surrounding
    spaces aside); None otherwise."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else None
    match = _INTEGRAL_TEXT.fullmatch(str(value).strip())
    return int(match.group(1)) if match else None


def _positive_index(classes: list[Any], positive_class: Any) -> int:
    """The index of ``positive_class`` in ``classes``; boolean classes take true/false in any
    letter case, or 1/0; integer classes, and float classes that are whole numbers, take any
    spelling of an integral number (``1``, ``1.0``, ``+1``), as their labels may be the floats
    1.0 and 0.0 (or the integers)."""
    if positive_class is None:
        return 1
    if classes and all(isinstance(c, bool) for c in classes):
        wanted = _BOOLEAN_SPELLINGS.get(str(positive_class).strip().lower())
        if wanted is not None and wanted in classes:
            return classes.index(wanted)
    else:
        for i, c in enumerate(classes):
            if c == positive_class or str(c) == str(positive_class):
                return i
        integers = [_integral(c) for c in classes]
        if classes and all(
            n is not None and not isinstance(c, str) for n, c in zip(integers, classes, strict=True)
        ):
            # Integer classes, or floats that are whole numbers (a float label output).
            number = _integral(positive_class)
            if number is not None and number in integers:
                return integers.index(number)
    raise invalid(
        "UNKNOWN_POSITIVE_CLASS",
        f"positive class {positive_class!r} is not one of the model's classes {classes}",
    )


def _positive_needs_binary(why: str) -> Exception:
    return invalid(
        "POSITIVE_CLASS_NEEDS_BINARY",
        f"a positive class is only for binary classification; {why}: leave it unset",
    )


def _fairness(
    table: pa.Table,
    protected: Sequence[str],
    y_pos: np.ndarray,
    pred_pos: np.ndarray,
    positive: str,
    limit: int,
    warnings: list[EvaluationWarning],
    steps: _Steps,
) -> dict[str, FairnessReport]:
    out = {}
    for name in protected:
        steps.check()
        groups = _groups(table, name, "INVALID_PROTECTED_COLUMN")
        if len(groups.names) > limit:
            raise invalid(
                "TOO_MANY_GROUPS",
                f"protected attribute {name!r} has {len(groups.names)} values (limit {limit}); "
                "bucket it into a few groups first",
                column=name,
            )
        report = fairness_report(name, groups, y_pos, pred_pos, positive, steps.check)
        warnings.extend(report.warnings)
        out[name] = report
        steps.step()
    return out


def evaluate(
    onnx_bytes: bytes,
    signature: Signature | None,
    table: pa.Table | bytes,
    *,
    label: str,
    feature_names: Sequence[str] = (),
    features: Sequence[str] | None = None,
    require_feature_names: bool = False,
    slices: Sequence[str] = (),
    protected: Sequence[str] = (),
    task: str | None = None,
    baseline: BaselineProfile | None = None,
    progress: Callable[[float], None] | None = None,
    classes: Sequence[Any] | None = None,
    positive_class: Any = None,
    output: str | None = None,
    thresholds: ValidationThresholds | None = None,
    max_slices: int = MAX_SLICES,
    chunk_rows: int | None = None,
    threads: int = 0,
    control: RunControl | None = None,
) -> EvaluationReport:
    """Evaluate an ONNX model on a labelled dataset (a pyarrow Table, or Parquet, Arrow IPC or
    CSV bytes) on CPU.

    ``signature`` describes the model (None: read from the model); ``feature_names`` are the
    version's features; ``features`` overrides the feature columns (see ``_inputs`` for how
    columns are chosen; ``require_feature_names`` refuses to guess them when the version
    records none); ``task`` overrides the detected task (see ``_model``); ``classes`` gives
    class labels in probability-column order when the model does not carry them;
    ``positive_class`` (default: the second class) is what binary metrics and fairness call
    positive (POSITIVE_CLASS_NEEDS_BINARY for any other model); ``output`` names the score
    output; ``baseline`` is the training profile to validate against. Each distinct value of a
    ``slices`` column is a slice; past ``max_slices`` values the ``max_slices - 1`` largest stay
    and the rest pool into ``<other>`` (with a SLICES_POOLED warning). A ``protected`` column
    with more than ``max_slices`` values is refused (TOO_MANY_GROUPS): pooling would hide
    disparities.
    The model runs over ``chunk_rows`` rows at a time (None: :func:`chunk_rows_for`).
    ``progress`` is called with fractions of work done (0 to 1, non-decreasing, 1 at the end):
    after each model run, and after the overall metrics, each protected attribute and each
    slice column; an exception it raises aborts the evaluation. ``control`` stops it from
    another thread: a model run in progress, and between model runs, validated features,
    slices and fairness groups (see :class:`RunControl`). Bad input raises ``InvalidArgument``
    with an UPPER_SNAKE reason.
    """
    if task is not None and task not in TASKS:
        raise invalid("INVALID_TASK", f"task must be one of {TASKS}, not {task!r}", task=task)
    if (chunk_rows is not None and chunk_rows < 1) or max_slices < 2:
        raise invalid("INVALID_ARGUMENT", "chunk_rows must be >= 1 and max_slices >= 2")
    digest = None
    csv: bytes | None = None
    if isinstance(table, bytes | bytearray | memoryview):
        digest = "sha256:" + hashlib.sha256(table).hexdigest()
        data = bytes(table)
        csv = data if detect_format(data) == "csv" else None
        table = read_table(data)
    if table.num_rows == 0:
        raise invalid("EMPTY_DATASET", "the dataset has no rows")
    _require_columns(table, label, slices, protected)
    if progress is not None:
        progress(0.0)
    session = open_session(onnx_bytes, threads)
    if signature is None:
        signature = session_signature(session)
    else:
        check_signature(signature, session)
    graph = ModelGraph(onnx_bytes)
    plan = plan_outputs(signature.outputs, task, output, graph.producer)
    if protected and plan.task == "regression":
        raise invalid("FAIRNESS_NEEDS_BINARY", "fairness metrics need a binary classifier")
    known = [label, *slices, *protected]
    inputs = plan_inputs(
        signature.inputs,
        table.column_names,
        feature_names=feature_names,
        features=features,
        excluded=known,
        require_feature_names=require_feature_names,
    )
    if csv is not None:
        table = _text_for_string_inputs(table, inputs, csv)
    check_types(inputs, table.schema)
    report_validation = validate(
        table,
        inputs.feature_names,
        known_columns=known,
        baseline=baseline,
        thresholds=thresholds or ValidationThresholds(),
        checkpoint=control.check if control is not None else None,
    )
    label_column = table.column(label)
    y_reg = regression_targets(label_column, label) if plan.task == "regression" else None
    per_run = chunk_rows or chunk_rows_for(table.num_rows)
    raw = run_chunks(session, inputs, plan, table, per_run, progress, control)
    resolved = plan.task
    if resolved is None:
        resolved = "classification" if raw.scores.ndim == 2 and raw.scores.shape[1] > 1 else None
        if resolved is None:
            raise invalid(
                "UNUSABLE_MODEL_OUTPUT",
                f"output {plan.score!r} gives one value per row; set the task to "
                "'regression' or 'classification' (positive-class probability)",
            )
    warnings: list[EvaluationWarning] = []
    if plan.unused_labels:
        warnings.append(
            EvaluationWarning(
                "REGRESSION_ASSUMED",
                f"output {plan.score!r} was read as a regression prediction: it is not made "
                "by Sigmoid or Softmax, its name does not contain 'prob', and no label output "
                f"is named '*label*'; the outputs {list(plan.unused_labels)} were not read as "
                "class labels. If the model is a binary classifier and the column the "
                "positive-class probability, set the task to 'classification'",
                "model",
            )
        )
    fairness: dict[str, FairnessReport] = {}
    steps = _Steps(1 + len(protected) + len(slices), progress, control)
    if positive_class is not None and resolved == "regression":
        raise _positive_needs_binary("this is a regression")
    if resolved == "regression":
        if raw.scores.ndim > 1 and raw.scores.shape[1] != 1:
            raise invalid("UNUSABLE_MODEL_OUTPUT", f"output {plan.score!r} has several columns")
        pred = raw.scores.reshape(-1)
        if not np.all(np.isfinite(pred)):
            raise invalid(
                "UNUSABLE_MODEL_OUTPUT",
                f"output {plan.score!r} holds NaN or infinite predictions; missing feature "
                "values are a common cause: fill or drop them",
            )
        y = y_reg if y_reg is not None else regression_targets(label_column, label)

        def metrics(rows: np.ndarray, scope: str) -> MetricResult:
            return regression_metrics(y[rows], pred[rows], scope)

        class_list: list[Any] = []
        positive_value = None
    else:
        proba = probabilities(
            raw.scores,
            plan.score,
            warnings,
            may_be_regression=task is None and raw.labels is None,
            margins=graph.margins(plan.score),
        )
        class_list = resolve_classes(graph, proba, raw.labels, classes, warnings)
        y_idx = encode_classes(label_column, label, class_list)
        if positive_class is not None and proba.shape[1] != 2:
            raise _positive_needs_binary(f"this model has {proba.shape[1]} classes")
        positive = _positive_index(class_list, positive_class) if proba.shape[1] == 2 else 1
        positive_value = class_list[positive] if proba.shape[1] == 2 else None

        def metrics(rows: np.ndarray, scope: str) -> MetricResult:
            return classification_metrics(y_idx[rows], proba[rows], positive, scope)

        if protected:
            if proba.shape[1] != 2:
                raise invalid(
                    "FAIRNESS_NEEDS_BINARY",
                    f"fairness metrics need a binary classifier; this model has "
                    f"{proba.shape[1]} classes",
                )
            pred_pos = np.argmax(proba, axis=1) == positive
            fairness = _fairness(
                table,
                protected,
                y_idx == positive,
                pred_pos,
                str(positive_value),
                max_slices,
                warnings,
                steps,
            )
    steps.check()
    overall, found = metrics(np.arange(table.num_rows), "overall")
    warnings[:0] = found
    steps.step()
    slice_reports = _slices(table, slices, metrics, max_slices, warnings, steps)
    report = EvaluationReport(
        task=resolved,
        rows=table.num_rows,
        metrics=overall,
        feature_names=inputs.feature_names,
        label=label,
        classes=class_list,
        positive_class=positive_value,
        slices=slice_reports,
        fairness=fairness,
        validation=report_validation,
        warnings=warnings,
        dataset_sha256=digest,
    )
    if progress is not None:
        progress(1.0)
    return report


def _text_for_string_inputs(table: pa.Table, inputs: InputPlan, csv: bytes) -> pa.Table:
    """``table`` with the CSV columns that feed string (BYTES) inputs but read as booleans
    (``True``/``False`` text) read again as the text they are, as a Parquet copy keeps it."""
    names = [
        name
        for spec, cols in inputs.bindings
        if spec.datatype == "BYTES"
        for name in cols
        if pa.types.is_boolean(table.schema.field(name).type)
    ]
    if not names:
        return table
    text = read_csv_text(csv, names)
    for name in names:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, pa.field(name, pa.string()), text.column(name))
    return table
