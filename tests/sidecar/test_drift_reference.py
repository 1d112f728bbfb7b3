"""Batch drift (`sidecar.drift.ReferenceSet`): every feature of a window scored against a
prepared reference, compared with scipy and numpy computed from the raw columns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from sidecar.drift import PSI_EPSILON, ReferenceSet
from sidecar.drift._reference import MIN_ROWS_FOR_THREADS


def _expected(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> tuple[float, ...]:
    """KS (scipy), PSI and JS of one column pair, from numpy's quantiles and a count by
    insertion position (a value on an edge goes to the bin on its right)."""
    ref = ref[np.isfinite(ref)]
    cur = cur[np.isfinite(cur)]
    ks = stats.ks_2samp(ref, cur, method="asymp")
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    rp = np.maximum(r / r.sum(), PSI_EPSILON)
    cp = np.maximum(c / c.sum(), PSI_EPSILON)
    psi = float(np.sum((cp - rp) * np.log(cp / rp)))
    return float(ks.statistic), float(ks.pvalue), psi, float(jensenshannon(r, c))


def _columns() -> tuple[np.ndarray, np.ndarray]:
    """A reference and a window with a normal, a shifted, a tied (integer-valued), a skewed
    and a constant column, NaN and infinities scattered in some."""
    rng = np.random.default_rng(7)
    ref = np.column_stack(
        [
            rng.normal(size=20_000),
            rng.normal(size=20_000),
            rng.integers(0, 6, size=20_000).astype(np.float64),
            rng.lognormal(size=20_000),
            np.full(20_000, 3.0),
        ]
    )
    cur = np.column_stack(
        [
            rng.normal(size=3_000),
            rng.normal(0.3, 1.2, size=3_000),
            rng.integers(0, 7, size=3_000).astype(np.float64),
            rng.lognormal(0.2, size=3_000),
            np.full(3_000, 3.0),
        ]
    )
    ref[::97, 0] = np.nan
    ref[5, 3] = np.inf
    cur[::31, 1] = np.nan
    cur[7, 0] = -np.inf
    cur[9, 2] = np.inf
    return ref, cur


@pytest.mark.parametrize("workers", [1, 3, None])
def test_window_scores_match_scipy_and_numpy_per_feature(workers: int | None) -> None:
    ref, cur = _columns()
    ref_before, cur_before = ref.copy(), cur.copy()
    names = ["normal", "shifted", "tied", "skewed", "constant"]
    prepared = ReferenceSet.prepare(ref, names, workers=workers)
    scores = prepared.score(cur, workers=workers)
    assert [s.name for s in scores] == names
    for i, score in enumerate(scores):
        ks, p, psi, js = _expected(ref[:, i], cur[:, i])
        assert score.count == int(np.isfinite(cur[:, i]).sum())
        assert score.ks_statistic == pytest.approx(ks, abs=1e-12), names[i]
        assert score.ks_pvalue == pytest.approx(p, abs=1e-9), names[i]
        assert score.psi == pytest.approx(psi, abs=1e-12), names[i]
        assert score.js == pytest.approx(js, abs=1e-12), names[i]
    # The shifted column is the one flagged; the caller's arrays are left as they were.
    assert scores[1].ks_pvalue < 1e-6 < scores[0].ks_pvalue
    assert scores[4].ks_statistic == 0.0 and scores[4].psi == 0.0
    np.testing.assert_array_equal(ref, ref_before)
    np.testing.assert_array_equal(cur, cur_before)


def test_threads_and_one_thread_give_the_same_scores() -> None:
    """Columns long enough to be scored on threads (each thread every n-th feature)."""
    ref, cur = _columns()
    assert len(ref) >= MIN_ROWS_FOR_THREADS
    window = np.vstack([cur] * (MIN_ROWS_FOR_THREADS // len(cur) + 1))
    prepared = ReferenceSet.prepare(ref, workers=3)
    assert prepared.score(window, workers=1) == prepared.score(window, workers=3)
    other = ReferenceSet.prepare(ref, workers=1)
    for a, b in zip(prepared.sorted_columns, other.sorted_columns, strict=True):
        np.testing.assert_array_equal(a, b)
    ks = stats.ks_2samp(ref[:, 1], window[:, 1], method="asymp", nan_policy="omit")
    assert prepared.score(window, workers=3)[1].ks_statistic == pytest.approx(ks.statistic)


def test_a_window_of_other_dtypes_is_scored_as_float64() -> None:
    ref, cur = _columns()
    prepared = ReferenceSet.prepare(ref[:, :2])
    window = np.nan_to_num(cur[:, :2], nan=0.0, posinf=0.0, neginf=0.0)
    as_float32 = prepared.score(window.astype(np.float32))
    expected = prepared.score(window.astype(np.float32).astype(np.float64))
    assert as_float32 == expected


def test_a_column_with_no_finite_value_scores_nan_and_the_others_still_score() -> None:
    ref, cur = _columns()
    cur[:, 3] = np.nan
    scores = ReferenceSet.prepare(ref).score(cur)
    assert scores[3].count == 0
    assert all(np.isnan(x) for x in (scores[3].psi, scores[3].ks_statistic, scores[3].js))
    assert scores[0].ks_statistic == pytest.approx(_expected(ref[:, 0], cur[:, 0])[0], abs=1e-12)


def test_an_empty_window_scores_nan_for_every_feature() -> None:
    ref, _ = _columns()
    scores = ReferenceSet.prepare(ref).score(np.empty((0, 5)))
    assert [s.count for s in scores] == [0] * 5
    assert all(np.isnan(s.ks_pvalue) for s in scores)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ReferenceSet.prepare(np.zeros(10)), "rows x features"),
        (lambda: ReferenceSet.prepare(np.zeros((10, 2)), ["only one"]), "one name per column"),
        (lambda: ReferenceSet.prepare(np.zeros((10, 2))).score(np.zeros((4, 3))), "rows x 2"),
        (lambda: ReferenceSet.prepare(np.zeros((10, 2))).score(np.zeros(4)), "rows x 2"),
    ],
)
def test_misshapen_input_is_refused_with_a_message(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
