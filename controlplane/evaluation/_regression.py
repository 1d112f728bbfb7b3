"""Regression metrics, vectorised with numpy.

* ``mae``: mean of ``|y - p|``.
* ``rmse``: square root of the mean of ``(y - p)^2``.
* ``mape``: mean of ``|y - p| / max(|y|, eps)`` with ``eps = 2.22e-16`` (float64 machine
  epsilon), as a fraction (0.1 means 10 %); huge where labels are near zero.
* ``r2``: ``1 - sum (y - p)^2 / sum (y - mean(y))^2``; None, with a ``CONSTANT_LABELS``
  warning, when every label has the same value. Constancy is tested on the labels themselves
  (``min == max``): the mean of labels such as ``0.1`` is off by an ulp, which leaves a tiny
  positive denominator and an r2 near ``-1e37`` instead of "undefined".
"""

from __future__ import annotations

import numpy as np

from controlplane.evaluation._errors import EvaluationWarning

REGRESSION_METRICS = ("mae", "rmse", "mape", "r2")
_EPS = float(np.finfo(np.float64).eps)


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, scope: str = "overall"
) -> tuple[dict[str, float | None], list[EvaluationWarning]]:
    """The regression metrics of the module docstring for float64 ``y`` and ``pred``."""
    err = y - pred
    abs_err = np.abs(err)
    ss_res = float(np.dot(err, err))
    centred = y - y.mean()
    ss_tot = float(np.dot(centred, centred))
    warnings: list[EvaluationWarning] = []
    r2: float | None = None
    why = ""
    if y.min() == y.max():
        why = "every label has the same value"
    elif ss_tot > 0.0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        why = "the labels vary too little for their variance to be measured in float64"
    if why:
        warnings.append(
            EvaluationWarning("CONSTANT_LABELS", f"r2 is undefined: {why}", scope, "r2")
        )
    metrics: dict[str, float | None] = {
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt(ss_res / len(y))),
        "mape": float(np.mean(abs_err / np.maximum(np.abs(y), _EPS))),
        "r2": r2,
    }
    return metrics, warnings
