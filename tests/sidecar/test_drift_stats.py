"""The drift statistics against scipy on random, tied, constant, skewed and tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from sidecar.drift import (
    chi_square,
    jensen_shannon,
    kolmogorov_sf,
    ks_2samp,
    psi,
    psi_from_counts,
    wasserstein,
)
from sidecar.drift._stats import PSI_EPSILON

RNG = np.random.default_rng(20261126)


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        ("normal", rng.normal(size=800), rng.normal(0.1, 1.1, 600)),
        ("shifted", rng.normal(size=3000), rng.normal(0.3, 1.0, 2000)),
        ("ties", rng.integers(0, 6, 500).astype(float), rng.integers(0, 7, 300).astype(float)),
        ("many-ties", rng.integers(0, 3, 4000).astype(float), rng.integers(0, 3, 4000) * 1.0),
        ("skewed", rng.lognormal(0, 2, 1000), rng.lognormal(0.2, 2, 700)),
        ("constant", np.full(50, 3.0), np.full(20, 3.0)),
        ("constant-vs-other", np.full(50, 3.0), np.full(20, 4.0)),
        ("n1", np.array([1.5]), rng.normal(size=10)),
        ("n1-n1", np.array([1.0]), np.array([2.0])),
        ("n2", np.array([0.0, 1.0]), np.array([0.5, 2.0])),
        ("small", rng.normal(size=7), rng.normal(size=5)),
        ("disjoint", rng.uniform(0, 1, 200), rng.uniform(2, 3, 150)),
        ("large-n", rng.normal(size=200_000), rng.normal(0.005, 1, 150_000)),
    ]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(("name", "a", "b"), _pairs(), ids=[p[0] for p in _pairs()])
def test_ks_2samp_matches_scipy(name: str, a: np.ndarray, b: np.ndarray) -> None:
    expected = stats.ks_2samp(a, b, method="asymp")
    statistic, pvalue = ks_2samp(a, b)
    assert statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    if math.isnan(expected.pvalue):
        # scipy gives NaN when round(n1 * n2 / (n1 + n2)) is 0 (two single values).
        assert math.isnan(pvalue)
    else:
        assert pvalue == pytest.approx(float(expected.pvalue), abs=1e-6)
    swapped = ks_2samp(b, a)
    assert swapped[0] == pytest.approx(statistic, abs=1e-12)


@pytest.mark.parametrize(("name", "a", "b"), _pairs(), ids=[p[0] for p in _pairs()])
def test_wasserstein_matches_scipy(name: str, a: np.ndarray, b: np.ndarray) -> None:
    expected = stats.wasserstein_distance(a, b)
    assert wasserstein(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_nan_and_inf_are_omitted() -> None:
    a = RNG.normal(size=300)
    b = RNG.normal(size=200)
    a_dirty = np.concatenate([a, [np.nan, np.inf, -np.inf]])
    b_dirty = np.concatenate([[np.nan], b])
    expected = stats.ks_2samp(a, b, method="asymp")
    assert ks_2samp(a_dirty, b_dirty) == pytest.approx(
        (float(expected.statistic), float(expected.pvalue)), abs=1e-9
    )
    assert wasserstein(a_dirty, b_dirty) == pytest.approx(stats.wasserstein_distance(a, b))


def test_empty_samples_raise() -> None:
    with pytest.raises(ValueError):
        ks_2samp([], [1.0])
    with pytest.raises(ValueError):
        wasserstein([np.nan], [1.0])


def test_kolmogorov_sf_matches_scipy_across_regimes() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 50, 140, 141, 500, 5_000, 90_909, 100_000, 100_001, 400_000):
        scale = 3.0 / math.sqrt(n)
        points = np.concatenate(
            [rng.uniform(0, 1, 8), rng.uniform(0, min(1.0, scale), 16), [0.5 / n, 1.0 / n, 0.5]]
        )
        for d in points:
            expected = float(stats.kstwo.sf(d, n))
            assert kolmogorov_sf(float(n), float(d)) == pytest.approx(expected, abs=1e-9), (n, d)


@pytest.mark.parametrize("bins", [2, 5, 10, 40])
def test_jensen_shannon_matches_scipy(bins: int) -> None:
    p = RNG.integers(0, 50, bins).astype(float)
    q = RNG.integers(0, 50, bins).astype(float)
    p[0] = 0.0
    q[-1] = 0.0
    p[1] = max(p[1], 1.0)
    q[1] = max(q[1], 1.0)
    assert jensen_shannon(p, q) == pytest.approx(float(jensenshannon(p, q)), abs=1e-12)
    assert jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ([117195, 6305886], [117195, 6305887]),
        ([1, 2, 3.0000001], [1, 2, 3]),
    ],
)
def test_jensen_shannon_matches_scipy_on_nearly_equal_histograms(
    p: list[float], q: list[float]
) -> None:
    # x * log(x / m) loses the small difference in the rounded ratio x / m; scipy's rel_entr
    # takes log1p((x - m) / m) there, so the distance is accurate down to the difference.
    assert jensen_shannon(p, q) == pytest.approx(float(jensenshannon(p, q)), rel=0, abs=1e-9)


def test_jensen_shannon_matches_scipy_on_random_nearly_equal_histograms() -> None:
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(2_000):
        k = int(rng.integers(2, 12))
        p = rng.integers(10**5, 10**7, k)
        q = p.copy()
        q[rng.integers(0, k)] += int(rng.integers(1, 3))
        worst = max(worst, abs(jensen_shannon(p, q) - float(jensenshannon(p, q))))
    assert worst <= 1e-9


def test_jensen_shannon_edge_cases() -> None:
    assert math.isnan(jensen_shannon([0, 0], [1, 2]))
    with pytest.raises(ValueError):
        jensen_shannon([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        jensen_shannon([-1, 2], [1, 2])


def _scipy_chi2(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    keep = (ref + cur) > 0
    result = stats.chi2_contingency(np.stack([ref[keep], cur[keep]]))
    return float(result.statistic), float(result.pvalue)


@pytest.mark.parametrize("categories", [2, 3, 6, 40])
def test_chi_square_matches_scipy(categories: int) -> None:
    rng = np.random.default_rng(categories)
    for _ in range(10):
        ref = rng.integers(0, 40, categories)
        cur = rng.integers(0, 40, categories)
        ref[0] += 1
        cur[-1] += 1
        if ((ref + cur) > 0).sum() < 2:
            continue
        statistic, pvalue = chi_square(ref, cur)
        expected = _scipy_chi2(ref, cur)
        assert statistic == pytest.approx(expected[0], rel=1e-9, abs=1e-12)
        assert pvalue == pytest.approx(expected[1], abs=1e-6)


def test_chi_square_yates_on_two_categories_and_unseen() -> None:
    # Two categories: one degree of freedom, so Yates' correction applies (as in scipy).
    ref, cur = np.array([90, 10]), np.array([70, 30])
    assert chi_square(ref, cur) == pytest.approx(_scipy_chi2(ref, cur), rel=1e-9)
    # A category unseen in the reference (count 0 there) and one seen nowhere (dropped).
    ref, cur = np.array([500, 300, 0, 0]), np.array([50, 30, 20, 0])
    assert chi_square(ref, cur) == pytest.approx(_scipy_chi2(ref, cur), rel=1e-9)
    # Large counts: the p-value underflows to zero in both.
    ref, cur = np.array([100_000, 5]), np.array([100, 7])
    assert chi_square(ref, cur) == pytest.approx(_scipy_chi2(ref, cur), rel=1e-9)


def test_chi_square_edge_cases() -> None:
    assert chi_square([10, 0], [5, 0]) == (0.0, 1.0)
    statistic, pvalue = chi_square([0, 0], [3, 4])
    assert math.isnan(statistic) and math.isnan(pvalue)
    with pytest.raises(ValueError):
        chi_square([1, 2], [1])


def _psi_reference(ref: np.ndarray, cur: np.ndarray, bins: int) -> float:
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    r = np.bincount(np.digitize(ref, edges), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.digitize(cur, edges), minlength=len(edges) + 1) / len(cur)
    r = np.maximum(r, PSI_EPSILON)
    c = np.maximum(c, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


@pytest.mark.parametrize(("name", "a", "b"), _pairs()[:7], ids=[p[0] for p in _pairs()[:7]])
def test_psi_matches_direct_numpy(name: str, a: np.ndarray, b: np.ndarray) -> None:
    for bins in (4, 10):
        assert psi(a, b, bins) == pytest.approx(_psi_reference(a, b, bins), rel=1e-12, abs=1e-15)


def test_psi_is_the_control_planes_definition() -> None:
    """The sidecar scores windows with the PSI the control plane recomputes from merged
    reports: one function and one epsilon, so both agree on any counts, empty bins included."""
    import modelplane.profiles as shared
    import sidecar.drift as drift

    assert drift.psi_from_counts is shared.psi_from_counts
    assert drift.PSI_EPSILON == PSI_EPSILON == shared.PSI_EPSILON
    rng = np.random.default_rng(3)
    for _ in range(300):
        bins = int(rng.integers(2, 25))
        ref = rng.integers(0, 40, bins) * (rng.random(bins) > 0.2)
        cur = rng.integers(0, 40, bins) * (rng.random(bins) > 0.2)
        if ref.sum() == 0 or cur.sum() == 0:
            assert math.isnan(drift.psi_from_counts(ref, cur))
            continue
        r = np.maximum(ref / ref.sum(), shared.PSI_EPSILON)
        c = np.maximum(cur / cur.sum(), shared.PSI_EPSILON)
        expected = float(np.sum((c - r) * np.log(c / r)))
        assert drift.psi_from_counts(ref, cur) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_psi_behaviour() -> None:
    a = RNG.normal(size=20_000)
    assert psi(a, RNG.normal(size=20_000)) < 0.01
    assert psi(a, RNG.normal(1.0, 1.0, 20_000)) > 0.2
    assert psi(np.full(10, 1.0), np.full(10, 1.0)) == 0.0
    assert math.isnan(psi([], [1.0]))
    assert math.isnan(psi_from_counts([0, 0], [1, 1]))
