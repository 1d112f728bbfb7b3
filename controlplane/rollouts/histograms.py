"""Fixed-bucket histograms as sidecars report them: checking, merging, quantiles and KS.

Layout: ``len(counts)`` equal buckets between ``low`` and ``high``, both given in the value's
own units, equal on a scale ``t``: the value itself, log10 of it with ``log_scale`` (``low``
must be > 0), or its symmetric log ``sign(x) * log10(1 + |x|)`` with ``symlog``. Bucket ``i``
covers ``[t⁻¹(a + i*w), t⁻¹(a + (i+1)*w))`` with ``a = t(low)`` and
``w = (t(high) - a) / len(counts)``. ``underflow`` counts values below ``low``, ``overflow``
values at or above ``high``.

Quantiles interpolate linearly on the scale within the bucket that holds the rank
(geometrically for log buckets), the way Prometheus' ``histogram_quantile`` does: rank
``q * total`` falls in the first bucket whose cumulative count reaches it. A rank in the
underflow answers ``low``, one in the overflow ``high``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from controlplane.domain.deployments import Histogram
from modelplane.errors import InvalidArgument

#: The most buckets a histogram may have.
MAX_BUCKETS = 4096
#: The largest count one report may carry (a window's requests, a bucket, a histogram's total):
#: far beyond any window's traffic, and 32,768 reports of it still add up within int64.
MAX_COUNT = 2**48
#: The largest merged count: int64's largest, what the API's counts can hold. A sum that would
#: pass it stays there (see :func:`saturated`).
MAX_SUM = 2**63 - 1


def saturated(values: Iterable[int]) -> int:
    """The sum of ``values`` (Python ints, so it cannot wrap), at most :data:`MAX_SUM`."""
    return min(sum(int(v) for v in values), MAX_SUM)


def saturated_float(values: Iterable[float]) -> float:
    """The sum of finite ``values``, kept finite: one that overflows stays at the largest
    double of its sign (stored evidence is JSON, which has no infinities)."""
    total = float(sum(values))
    return total if math.isfinite(total) else math.copysign(sys.float_info.max, total)


def layout_mismatch(what: str, detail: str) -> InvalidArgument:
    """The error for histograms (or feature bins) that cannot be added."""
    return InvalidArgument(
        f"{what}: the layout differs from other replicas' reports ({detail}); every replica of "
        "a deployment must use the same buckets",
        reason="HISTOGRAM_LAYOUT_MISMATCH",
        metadata={"field": what},
    )


def check(h: Histogram, what: str) -> Histogram:
    """``h`` when its layout and counts make sense; INVALID_ARGUMENT (INVALID_HISTOGRAM)."""

    def bad(problem: str) -> InvalidArgument:
        return InvalidArgument(
            f"{what}: {problem}", reason="INVALID_HISTOGRAM", metadata={"field": what}
        )

    if not h.counts:
        raise bad("a histogram needs at least one bucket")
    if len(h.counts) > MAX_BUCKETS:
        raise bad(f"at most {MAX_BUCKETS} buckets are allowed, got {len(h.counts)}")
    if not (math.isfinite(h.low) and math.isfinite(h.high)) or h.high <= h.low:
        raise bad(f"high ({h.high}) must be finite and above low ({h.low})")
    if h.log_scale and h.symlog:
        raise bad("a histogram is on one scale: log_scale and symlog cannot both be set")
    if h.log_scale and h.low <= 0:
        raise bad("a log-scale histogram needs low > 0")
    width = (_to_scale(h, h.high) - _to_scale(h, h.low)) / len(h.counts)
    if not math.isfinite(width) or width <= 0:
        raise bad(
            f"its buckets on [{h.low}, {h.high}) have no finite, positive width on its scale "
            f"({width}); use a narrower range, or log_scale or symlog for a wide one"
        )
    if min(h.counts) < 0 or h.underflow < 0 or h.overflow < 0:
        raise bad("counts cannot be negative")
    if h.total > MAX_COUNT:
        raise bad(
            f"it counts {h.total} values in all (buckets, underflow and overflow); one report "
            f"counts at most {MAX_COUNT}"
        )
    if not math.isfinite(h.sum):
        raise bad("sum must be finite")
    return h


def _to_scale(h: Histogram, x: float) -> float:
    if h.log_scale:
        return math.log10(x)
    if h.symlog:
        return math.copysign(math.log10(1.0 + abs(x)), x)
    return x


def _from_scale(h: Histogram, t: np.ndarray) -> np.ndarray:
    if h.log_scale:
        return np.power(10.0, t)
    if h.symlog:
        return np.sign(t) * (np.power(10.0, np.abs(t)) - 1.0)
    return t


def edges(h: Histogram) -> np.ndarray:
    """The ``len(counts) + 1`` bucket edges in the value's units."""
    t = np.linspace(_to_scale(h, h.low), _to_scale(h, h.high), len(h.counts) + 1)
    return _from_scale(h, t)


def merge(items: Sequence[Histogram], what: str) -> Histogram | None:
    """The sum of histograms with one layout (None for none); a mismatch is refused."""
    if not items:
        return None
    first = items[0]
    for other in items[1:]:
        if other.layout != first.layout:
            raise layout_mismatch(what, f"{shown(other)} vs {shown(first)}")
    return Histogram(
        low=first.low,
        high=first.high,
        log_scale=first.log_scale,
        symlog=first.symlog,
        counts=tuple(saturated(bucket) for bucket in zip(*(h.counts for h in items), strict=True)),
        underflow=saturated(h.underflow for h in items),
        overflow=saturated(h.overflow for h in items),
        sum=saturated_float(h.sum for h in items),
    )


def shown(h: Histogram) -> str:
    """``h``'s layout, for people: ``50 log buckets on [0.0001, 10.0)``."""
    scale = "log" if h.log_scale else "symlog" if h.symlog else "linear"
    return f"{len(h.counts)} {scale} buckets on [{h.low}, {h.high})"


def quantile(h: Histogram | None, q: float) -> float | None:
    """The ``q`` quantile (0..1) estimated from ``h``; None when it counted nothing."""
    if h is None:
        return None
    total = h.total
    if total <= 0:
        return None
    rank = q * total
    if h.underflow > 0 and rank <= h.underflow:
        return h.low
    cumulative = float(h.underflow)
    n = len(h.counts)
    lo_t, hi_t = _to_scale(h, h.low), _to_scale(h, h.high)
    width = (hi_t - lo_t) / n
    for i, count in enumerate(h.counts):
        if count > 0 and cumulative + count >= rank:
            fraction = min(max((rank - cumulative) / count, 0.0), 1.0)
            return float(_from_scale(h, np.asarray(lo_t + (i + fraction) * width)))
        cumulative += count
    return h.high


def cdf(h: Histogram) -> np.ndarray:
    """The empirical CDF at each bucket edge, right after the underflow: ``len(counts)+2``
    points (below ``low``, each edge, and 1.0 past the overflow)."""
    counts = np.concatenate(([h.underflow], np.asarray(h.counts, dtype=np.float64), [h.overflow]))
    total = counts.sum()
    return np.cumsum(counts) / total if total > 0 else np.zeros(len(counts))


def ks_statistic(a: Histogram | None, b: Histogram | None, what: str) -> float | None:
    """The largest distance between the two CDFs, taken at the bucket edges; None when either
    is empty. Equals the two-sample KS statistic of the data rounded into the buckets."""
    if a is None or b is None or a.total <= 0 or b.total <= 0:
        return None
    if a.layout != b.layout:
        raise layout_mismatch(what, f"{shown(a)} vs {shown(b)}")
    return float(np.max(np.abs(cdf(a) - cdf(b))))
