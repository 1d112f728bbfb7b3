"""Drift statistics on whole samples, matching scipy's definitions.

Each function drops NaN and infinite values first (scipy's ``nan_policy="omit"``; a value
outside the real line has no place in a distribution distance). Results agree with scipy to
rounding: ``ks_2samp`` with ``scipy.stats.ks_2samp(..., method="asymp")``, ``wasserstein``
with ``scipy.stats.wasserstein_distance``, ``jensen_shannon`` with
``scipy.spatial.distance.jensenshannon`` (natural log), ``chi_square`` with
``scipy.stats.chi2_contingency``. ``psi`` has no scipy counterpart; its definition,
:func:`psi_from_counts` with :data:`PSI_EPSILON`, is the one the control plane uses on merged
reports (:mod:`modelplane.profiles`), imported here so that both sides compute the same number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from modelplane.profiles import PSI_EPSILON, psi_from_counts, quantile_edges
from sidecar.drift._kernels import ks_sorted, wasserstein_sorted
from sidecar.drift._kolmogorov import ks_pvalue

__all__ = [
    "PSI_EPSILON",
    "category_counts",
    "chi2_sf",
    "chi_square",
    "finite_sorted",
    "jensen_shannon",
    "ks_2samp",
    "ks_sorted_pair",
    "psi",
    "psi_from_counts",
    "sorted_bin_counts",
    "wasserstein",
]


def finite_sorted(values: ArrayLike) -> np.ndarray:
    """The finite values of ``values`` as a sorted contiguous float64 array."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = np.sort(arr)
    lo = int(np.searchsorted(arr, -np.inf, side="right"))
    hi = int(np.searchsorted(arr, np.inf, side="left"))
    return np.ascontiguousarray(arr[lo:hi])


def _two_samples(reference: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ref = finite_sorted(reference)
    cur = finite_sorted(current)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("both samples need at least one finite value")
    return ref, cur


def ks_2samp(reference: ArrayLike, current: ArrayLike) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test: ``(statistic, pvalue)``.

    The statistic is the exact supremum distance between the two empirical CDFs (ties
    handled by evaluating both CDFs right-continuously at every pooled value). The p-value is
    the asymptotic one, P(D_n >= statistic) for the one-sample Kolmogorov distribution at
    ``n = round(n1 * n2 / (n1 + n2))``. Raises ValueError when a sample has no finite value.
    """
    ref, cur = _two_samples(reference, current)
    statistic = float(ks_sorted(ref, cur))
    return statistic, ks_pvalue(statistic, len(ref), len(cur))


def ks_sorted_pair(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> tuple[float, float]:
    """:func:`ks_2samp` for samples already sorted, finite, float64 and contiguous."""
    statistic = float(ks_sorted(reference_sorted, current_sorted))
    return statistic, ks_pvalue(statistic, len(reference_sorted), len(current_sorted))


def wasserstein(reference: ArrayLike, current: ArrayLike) -> float:
    """First Wasserstein (earth mover's) distance between two samples with equal weights.

    Raises ValueError when a sample has no finite value.
    """
    ref, cur = _two_samples(reference, current)
    return float(wasserstein_sorted(ref, cur))


def jensen_shannon(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon distance (the square root of the divergence, natural log) of two
    histograms over the same bins; each is normalised to sum to one first.

    Returns NaN when a histogram sums to zero. Raises ValueError on different lengths or
    negative entries.
    """
    pa_ = np.asarray(p, dtype=np.float64).ravel()
    qa = np.asarray(q, dtype=np.float64).ravel()
    if pa_.shape != qa.shape:
        raise ValueError("the histograms need the same number of bins")
    if (pa_ < 0).any() or (qa < 0).any():
        raise ValueError("histogram counts cannot be negative")
    ps, qs = pa_.sum(), qa.sum()
    if ps <= 0 or qs <= 0:
        return math.nan
    pn, qn = pa_ / ps, qa / qs
    mid = (pn + qn) / 2.0
    divergence = _rel_entropy(pn, mid) + _rel_entropy(qn, mid)
    return float(math.sqrt(max(divergence, 0.0) / 2.0))


def _rel_entropy(x: np.ndarray, y: np.ndarray) -> float:
    """``sum(x * ln(x / y))`` (0 where ``x`` is 0; ``y > 0`` wherever ``x > 0``), each term
    as ``scipy.special.rel_entr`` forms it: ``x * log1p((x - y) / y)`` when ``x / y`` is
    within (0.5, 2), where ``log`` of the rounded ratio loses the small difference;
    ``x * (ln x - ln y)`` when the ratio under- or overflows. Summed over every bin, zeros
    included, as scipy does."""
    terms = np.zeros_like(x)
    mask = x > 0
    xs, ys = x[mask], y[mask]
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        ratio = xs / ys
        near = (ratio > 0.5) & (ratio < 2.0)
        plain = ~near & (ratio > np.finfo(np.float64).tiny) & (ratio < np.inf)
        far = ~near & ~plain
        values = np.empty_like(xs)
        values[near] = xs[near] * np.log1p((xs[near] - ys[near]) / ys[near])
        values[plain] = xs[plain] * np.log(ratio[plain])
        values[far] = xs[far] * (np.log(xs[far]) - np.log(ys[far]))
    terms[mask] = values
    return float(np.sum(terms))


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for a chi-square variable with ``dof`` degrees of freedom."""
    if dof <= 0 or math.isnan(statistic):
        return math.nan
    if statistic <= 0:
        return 1.0
    return _upper_gamma_q(dof / 2.0, statistic / 2.0)


def _upper_gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x)."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        # Series for P(a, x); Q = 1 - P.
        term = 1.0 / a
        total = term
        denom = a
        for _ in range(100_000):
            denom += 1.0
            term *= x / denom
            total += term
            if abs(term) < abs(total) * 1e-17:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Continued fraction for Q (modified Lentz).
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square(reference_counts: ArrayLike, current_counts: ArrayLike) -> tuple[float, float]:
    """Chi-square test of homogeneity on the 2 x K table of category counts.

    The two arguments are counts over the same K categories (a category unseen in the
    reference has count 0 there). Categories with zero count in both rows are dropped, since
    their expected frequency is zero and the statistic would be undefined; what remains is
    what ``scipy.stats.chi2_contingency`` computes with its defaults: Yates' continuity
    correction when (and only when) one degree of freedom remains. With a single category
    left the test has no degree of freedom and gives ``(0.0, 1.0)``; when either row sums to
    zero it gives ``(nan, nan)``.
    """
    ref = np.asarray(reference_counts, dtype=np.float64).ravel()
    cur = np.asarray(current_counts, dtype=np.float64).ravel()
    if ref.shape != cur.shape:
        raise ValueError("the count vectors need the same categories")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("counts cannot be negative")
    keep = (ref + cur) > 0
    observed = np.stack([ref[keep], cur[keep]])
    row = observed.sum(axis=1)
    if row[0] <= 0 or row[1] <= 0:
        return math.nan, math.nan
    dof = observed.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0
    expected = np.outer(row, observed.sum(axis=0)) / observed.sum()
    if dof == 1:
        diff = expected - observed
        observed = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, dof)


def psi(reference: ArrayLike, current: ArrayLike, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Bins are the reference's quantile bins (edges at the ``1/bins .. (bins-1)/bins``
    quantiles, numpy's linear method, equal edges merged, outer bins open; a value equal to an
    edge goes to the bin on its right), then :func:`psi_from_counts`. NaN when either sample
    has no finite value.
    """
    ref = finite_sorted(reference)
    cur = finite_sorted(current)
    if len(ref) == 0 or len(cur) == 0:
        return math.nan
    edges = quantile_edges(ref, bins)
    return psi_from_counts(sorted_bin_counts(ref, edges), sorted_bin_counts(cur, edges))


def sorted_bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of sorted values in the bins of ``edges`` (a value on an edge goes right)."""
    cuts = np.searchsorted(sorted_values, edges, side="left")
    bounds = np.concatenate(([0], cuts, [len(sorted_values)]))
    return np.diff(bounds).astype(np.int64)


def category_counts(
    reference: dict[str, int], current: dict[str, int], categories: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Align two category-count maps on the union of their categories (sorted)."""
    names = list(categories) if categories is not None else sorted(set(reference) | set(current))
    ref = np.array([reference.get(k, 0) for k in names], dtype=np.int64)
    cur = np.array([current.get(k, 0) for k in names], dtype=np.int64)
    return names, ref, cur
