"""Regression metrics, vectorised with numpy.

* ``mae``: mean of ``|y - p|``.
* ``rmse``: square root of the mean of ``(y - p)^2``.
* ``mape``: mean of ``|y - p| / max(|y|, eps)`` with ``eps = 2.22e-16`` (float64 machine
  epsilon), as a fraction (0.1 means 10 %); huge where labels are near zero.
* ``r2``: ``1 - sum (y - p)^2 / sum (y - mean(y))^2``; None, with a ``CONSTANT_LABELS``
  warning, when every label has the same value. Constancy is tested on the labels themselves
  (``min == max``): the mean of labels such as ``0.1`` is off by an ulp, which leaves a tiny
  positive denominator and an r2 near ``-1e37`` instead of "undefined".

A metric whose value exceeds float64 (errors near 1e308) is None with a ``METRIC_OVERFLOW``
warning. Values of any magnitude are computed as if they were near 1 (see
:func:`regression_metrics`), so labels near 1e-170, whose squares underflow, lose nothing.
"""

from __future__ import annotations

import numpy as np

from controlplane.evaluation._errors import EvaluationWarning

REGRESSION_METRICS = ("mae", "rmse", "mape", "r2")
_EPS = float(np.finfo(np.float64).eps)


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, scope: str = "overall"
) -> tuple[dict[str, float | None], list[EvaluationWarning]]:
    """The regression metrics of the module docstring for finite float64 ``y`` and ``pred``.

    They are computed on values divided by the power of two that brings the largest into
    [1, 2) (exact: only exponents change), so that squares and sums of labels as large as
    1e200 do not overflow and those of labels as small as 1e-170 do not underflow to zero; a
    metric whose value itself is beyond float64 is None with a ``METRIC_OVERFLOW`` warning."""
    scale = _power_of_two_scale(max(float(np.max(np.abs(y))), float(np.max(np.abs(pred)))))
    ys = y / scale
    err = ys - pred / scale
    abs_err = np.abs(err)
    ss_res = float(np.dot(err, err))
    centred = ys - ys.mean()
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
    with np.errstate(over="ignore"):
        metrics: dict[str, float | None] = {
            "mae": float(abs_err.mean()) * scale,
            "rmse": float(np.sqrt(ss_res / len(y))) * scale,
            "mape": _mape(y, pred, abs_err, ys),
            "r2": r2,
        }
    for name, value in metrics.items():
        if value is not None and not np.isfinite(value):
            metrics[name] = None
            warnings.append(
                EvaluationWarning(
                    "METRIC_OVERFLOW",
                    f"{name} is too large for a float64 (the errors are near 1e308)",
                    scope,
                    name,
                )
            )
    return metrics, warnings


def _mape(y: np.ndarray, pred: np.ndarray, abs_err: np.ndarray, ys: np.ndarray) -> float:
    """The mean of ``|y - p| / max(|y|, eps)``, unscaled (the floor is an absolute amount),
    except where ``y - p`` itself overflows: there ``|y|`` is above 1e292 and the ratio is
    that of the scaled values."""
    with np.errstate(over="ignore"):
        raw = np.abs(y - pred)
    ratio = raw / np.maximum(np.abs(y), _EPS)
    beyond = np.isinf(raw)
    ratio[beyond] = abs_err[beyond] / np.abs(ys[beyond])
    return float(np.mean(ratio))


def _power_of_two_scale(largest: float) -> float:
    """The power of two that brings ``largest`` into [1, 2) when divided by it; 1 for values
    already there and for zero. Scaling up is exact; scaling down loses bits only of values
    over 2**1021 times smaller than the largest. Float rounding does not depend on powers of
    two, so scaled data gives the metrics of the unscaled data wherever those did not
    underflow or overflow."""
    if largest == 0.0 or 1.0 <= largest < 2.0:
        return 1.0
    _, exponent = np.frexp(largest)  # largest = m * 2**exponent with 0.5 <= m < 1
    return float(np.ldexp(1.0, int(exponent) - 1))
