"""Result objects of an evaluation, their JSON form, and deltas between two evaluations.

Every ``to_dict`` returns plain JSON types; a metric that is undefined, NaN or infinite is
None. Policies read parts of them as CEL variables: ``metrics``, ``delta``,
``fairness["sex"].demographic_parity_ratio``, ``validation.passed``. The slices
(``slices["region"]["eu"]["metrics"]``) are in the stored report and the model card, not in a
policy's variables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.evaluation._errors import EvaluationWarning, invalid
from controlplane.evaluation._fairness import FairnessReport
from controlplane.evaluation._validation import ValidationReport


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    as_float = float(value)
    return as_float if math.isfinite(as_float) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return finite(obj)
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


@dataclass(frozen=True)
class SliceReport:
    """The metrics of the rows where a slice column has one value."""

    column: str
    value: str
    count: int
    metrics: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        """The slice as a JSON-ready dictionary."""
        return _clean({"count": self.count, "metrics": self.metrics})


@dataclass(frozen=True)
class EvaluationReport:
    """Everything one evaluation found.

    ``classes`` are the model's class labels in probability-column order (classification);
    ``positive_class`` is the class binary metrics and fairness call positive; ``slices`` maps
    each slice column to its slices in value order; ``dataset_sha256`` is the digest of the
    dataset bytes when the dataset came as bytes.
    """

    task: str
    rows: int
    metrics: dict[str, float | None]
    feature_names: list[str]
    label: str
    classes: list[Any] = field(default_factory=list)
    positive_class: Any = None
    slices: dict[str, list[SliceReport]] = field(default_factory=dict)
    fairness: dict[str, FairnessReport] = field(default_factory=dict)
    validation: ValidationReport | None = None
    warnings: list[EvaluationWarning] = field(default_factory=list)
    dataset_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dictionary (floats finite or None)."""
        return _clean(
            {
                "task": self.task,
                "rows": self.rows,
                "metrics": dict(self.metrics),
                "feature_names": list(self.feature_names),
                "label": self.label,
                "classes": list(self.classes),
                "positive_class": self.positive_class,
                "slices": {
                    column: {s.value: s.to_dict() for s in slices}
                    for column, slices in self.slices.items()
                },
                "fairness": {name: f.to_dict() for name, f in self.fairness.items()},
                "validation": self.validation.to_dict() if self.validation else None,
                "warnings": [w.to_dict() for w in self.warnings],
                "dataset_sha256": self.dataset_sha256,
            }
        )


def _facts(report: EvaluationReport | Mapping[str, Any]) -> tuple[str, int, str | None, dict]:
    if isinstance(report, EvaluationReport):
        return report.task, report.rows, report.dataset_sha256, report.metrics
    try:
        return (
            str(report["task"]),
            int(report["rows"]),
            report.get("dataset_sha256"),
            dict(report["metrics"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise invalid(
            "INVALID_REPORT", f"not an evaluation report (needs task, rows, metrics): {err}"
        ) from None


def compare(
    report: EvaluationReport | Mapping[str, Any],
    reference: EvaluationReport | Mapping[str, Any],
) -> dict[str, float | None]:
    """``metric -> report's value minus reference's value`` over the metrics of ``report``.

    A delta is None where either side is undefined or the reference lacks the metric. Both must
    be of the same task and the same dataset: TASK_MISMATCH or DATASET_MISMATCH otherwise (row
    counts differ, or both carry dataset digests that differ). Either side may be a report or
    its ``to_dict`` form (as stored).
    """
    task, rows, digest, metrics = _facts(report)
    ref_task, ref_rows, ref_digest, ref_metrics = _facts(reference)
    if task != ref_task:
        raise invalid(
            "TASK_MISMATCH",
            f"cannot compare a {task} evaluation with a {ref_task} one",
        )
    if rows != ref_rows or (digest and ref_digest and digest != ref_digest):
        raise invalid(
            "DATASET_MISMATCH",
            f"the evaluations used different datasets ({rows} rows, {digest or 'no digest'} "
            f"against {ref_rows} rows, {ref_digest or 'no digest'}); deltas need the same data",
        )
    deltas: dict[str, float | None] = {}
    for name, value in metrics.items():
        current = finite(value)
        previous = finite(ref_metrics.get(name))
        deltas[name] = None if current is None or previous is None else current - previous
    return deltas
