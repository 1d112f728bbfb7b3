"""Classification metrics over class indices and a probability matrix, vectorised with numpy.

Inputs: ``y`` holds each row's true class index in ``0..k-1``; ``proba`` is ``[n, k]`` with
rows that sum to one; the predicted class is ``argmax(proba)`` (ties go to the lower index).
``positive`` is the index of the positive class of a binary problem (``k == 2``).

Definitions (every metric is a float in the report, or None when undefined):

* ``accuracy``: share of rows whose predicted class is the true class.
* ``precision``, ``recall``, ``f1``: binary: of the positive class. Multiclass: the average of
  the per-class values weighted by each class's number of true rows, so the weighted recall is
  the accuracy (equal to it exactly).
* ``precision_macro``, ``recall_macro``, ``f1_macro``: the unweighted mean of the per-class
  values over the classes that occur in the labels or the predictions. A per-class value whose
  denominator is zero (no predicted row for precision, no true row for recall) counts as 0.
* ``roc_auc``: binary: ROC AUC of the positive-class probability. Multiclass: one-vs-rest, the
  mean of each class's ROC AUC (its probability against "any other class") over the classes
  that have both true and other rows. None, with a warning, when no class qualifies.
* ``pr_auc``: average precision, of the positive class (binary) or the one-vs-rest mean over
  the classes with at least one true row (multiclass). None, with a warning, without one.
* ``log_loss``: mean of ``-ln p_true`` with ``p_true`` clipped to ``[eps, 1 - eps]``,
  ``eps = 2.22e-16`` (float64 machine epsilon).
* ``brier``: binary: mean of ``(p_positive - 1[y is positive])^2``. Multiclass: mean over rows
  of ``sum_c (p_c - 1[y == c])^2`` (the original multi-category score, range 0 to 2).
* ``ece``: expected calibration error, see :func:`expected_calibration_error`.
"""

from __future__ import annotations

import numpy as np

from controlplane.evaluation._errors import EvaluationWarning
from controlplane.evaluation._ranking import average_precision, roc_auc

CLASSIFICATION_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "ece",
)

#: Interior and outer edges of the ten calibration bins.
ECE_EDGES = np.linspace(0.0, 1.0, 11)
_EPS = float(np.finfo(np.float64).eps)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ECE over ten equal-width bins of ``confidence``.

    Bin ``b`` (0..9) holds the rows with ``ECE_EDGES[b] <= c < ECE_EDGES[b + 1]``, where
    ``ECE_EDGES = numpy.linspace(0, 1, 11)``; the last bin also holds ``c == 1``. Then
    ``ECE = sum_b (n_b / n) * |mean(correct in b) - mean(confidence in b)|`` over the non-empty
    bins. For a binary problem the confidence is the positive-class probability and "correct"
    means "the row is positive" (reliability of the positive-class probability); for a
    multiclass problem the confidence is the top-class probability and "correct" means the
    top class is the true class.
    """
    bins = np.searchsorted(ECE_EDGES[1:-1], confidence, side="right")
    n_b = np.bincount(bins, minlength=10).astype(np.float64)
    conf_b = np.bincount(bins, weights=confidence, minlength=10)
    hit_b = np.bincount(bins, weights=correct.astype(np.float64), minlength=10)
    filled = n_b > 0
    gap = np.abs(hit_b[filled] - conf_b[filled])
    return float(gap.sum() / len(confidence))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _ovr_mean(
    proba: np.ndarray, y: np.ndarray, metric: str, scope: str, warnings: list[EvaluationWarning]
) -> float | None:
    fn = roc_auc if metric == "roc_auc" else average_precision
    values = [fn(proba[:, c], y == c) for c in range(proba.shape[1])]
    defined = [v for v in values if v is not None]
    skipped = len(values) - len(defined)
    if not defined:
        warnings.append(_undefined(metric, scope))
        return None
    if skipped:
        warnings.append(
            EvaluationWarning(
                "CLASSES_SKIPPED",
                f"{metric} averages {len(defined)} of {len(values)} classes: the others have "
                "no true rows" + (" or no other rows" if metric == "roc_auc" else ""),
                scope,
                metric,
            )
        )
    return float(np.mean(defined))


def _undefined(metric: str, scope: str) -> EvaluationWarning:
    if metric == "roc_auc":
        why = "the labels hold a single class, so there is no positive/negative pair to rank"
    else:
        why = "no row has the positive class, so precision-recall is undefined"
    return EvaluationWarning("SINGLE_CLASS", f"{metric} is undefined: {why}", scope, metric)


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, positive: int = 1, scope: str = "overall"
) -> tuple[dict[str, float | None], list[EvaluationWarning]]:
    """Every classification metric of the module docstring, and warnings for undefined ones."""
    n, k = proba.shape
    warnings: list[EvaluationWarning] = []
    pred = np.argmax(proba, axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, actual)
    f1 = _safe_ratio(2.0 * tp, predicted + actual)
    present = (predicted + actual) > 0
    out: dict[str, float | None] = {"accuracy": float(tp.sum() / n)}
    if k == 2:
        out["precision"] = float(precision[positive])
        out["recall"] = float(recall[positive])
        out["f1"] = float(f1[positive])
    else:
        # Weighted by true rows, summed over the classes present and divided once, as
        # scikit-learn's np.average does; recall so weighted is the accuracy, computed as such
        # so that the two are equal to the last bit.
        weights = actual[present]
        out["precision"] = float(np.sum(precision[present] * weights) / n)
        out["recall"] = out["accuracy"]
        out["f1"] = float(np.sum(f1[present] * weights) / n)
    out["precision_macro"] = float(precision[present].mean())
    out["recall_macro"] = float(recall[present].mean())
    out["f1_macro"] = float(f1[present].mean())
    if k == 2:
        is_pos = y == positive
        for name, fn in (("roc_auc", roc_auc), ("pr_auc", average_precision)):
            value = fn(proba[:, positive], is_pos)
            if value is None:
                warnings.append(_undefined(name, scope))
            out[name] = value
    else:
        out["roc_auc"] = _ovr_mean(proba, y, "roc_auc", scope, warnings)
        out["pr_auc"] = _ovr_mean(proba, y, "pr_auc", scope, warnings)
    p_true = np.clip(proba[np.arange(n), y], _EPS, 1.0 - _EPS)
    out["log_loss"] = float(-np.mean(np.log(p_true)))
    if k == 2:
        is_pos_f = (y == positive).astype(np.float64)
        out["brier"] = float(np.mean((proba[:, positive] - is_pos_f) ** 2))
        out["ece"] = expected_calibration_error(proba[:, positive], y == positive)
    else:
        onehot = np.zeros_like(proba)
        onehot[np.arange(n), y] = 1.0
        out["brier"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
        out["ece"] = expected_calibration_error(proba[np.arange(n), pred], pred == y)
    return out, warnings
