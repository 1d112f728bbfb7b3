"""Streaming drift windows: exact KS against the sample, merging, reports, edge cases."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from controlplane.domain.deployments import DriftSummary, FeatureCounts
from controlplane.rollouts.drift import feature_psi
from modelplane.profiles import (
    BaselineProfile,
    CategoricalFeature,
    NumericFeature,
    build_profile,
    load_baseline,
)
from sidecar.drift import (
    DriftMonitor,
    DriftThresholds,
    WindowState,
    psi_from_counts,
    score_window,
)


class Clock:
    """A settable clock for time windows."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _numeric_profile(features: int = 4, rows: int = 20_000, seed: int = 0) -> BaselineProfile:
    rng = np.random.default_rng(seed)
    columns = {f"f{i}": rng.normal(size=rows) for i in range(features)}
    columns["ints"] = rng.integers(0, 5, rows).astype(np.float64)
    return build_profile(pa.table(columns), [], sample_size=2_000, seed=seed)


def _mixed_profile() -> BaselineProfile:
    rng = np.random.default_rng(5)
    n = 5_000
    table = pa.table(
        {
            "x": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]).tolist(),
        }
    )
    return build_profile(table, [], sample_size=1_000)


def test_window_ks_is_exact_against_the_sample() -> None:
    profile = _numeric_profile()
    monitor = DriftMonitor(profile)
    rng = np.random.default_rng(11)
    batch = rng.normal(0.05, 1.0, size=(3_000, 5))
    batch[:, 4] = rng.integers(-1, 7, 3_000)  # ties, unseen values and out of range
    batch[::50, 0] = np.nan
    monitor.update(batch[:1_000])
    monitor.update(batch[1_000:].astype(np.float32).astype(np.float64))
    report = monitor.score(monitor.flush())
    for i, feature in enumerate(profile.features):
        assert isinstance(feature, NumericFeature)
        values = batch[:, i][np.isfinite(batch[:, i])]
        expected = stats.ks_2samp(feature.sample, values, method="asymp")
        got = report.features[i]
        assert got.ks_statistic == pytest.approx(float(expected.statistic), abs=1e-12)
        assert got.ks_pvalue == pytest.approx(float(expected.pvalue), abs=1e-6)
        bins = np.bincount(
            np.searchsorted(feature.edges, values, side="right"), minlength=len(feature.edges) + 1
        )
        assert got.psi == pytest.approx(psi_from_counts(feature.bin_counts, bins), rel=1e-12)
        assert feature.min is not None and feature.max is not None
        outside = ((values < feature.min) | (values > feature.max)).sum()
        assert got.out_of_range_share == pytest.approx(outside / len(batch))
    assert report.features[0].missing_share == pytest.approx(60 / 3_000)
    assert report.features[4].out_of_range_share > 0


@pytest.mark.parametrize(
    "window",
    [
        [5.0] * 8,  # every value between two sample values: the distance is in the gap
        [-3.0, 5.0, 5.0, 12.0],  # below, between and above the sample
        [10.0, 10.0, 0.0],  # only on sample values
        [0.5, 1.5, 2.5, 9.5],  # several gaps
        [11.0],  # one value, above everything
    ],
)
def test_window_ks_counts_values_between_sample_values(window: list[float]) -> None:
    """The window's CDF can pass the sample's inside a gap between two sample values; the
    statistic must see it there, as scipy does."""
    profile = build_profile(pa.table({"x": [0.0, 10.0, 10.0, 10.0]}), [])
    (feature,) = profile.features
    assert isinstance(feature, NumericFeature)
    monitor = DriftMonitor(profile)
    monitor.update(np.array(window)[:, None])
    got = monitor.score(monitor.flush()).features[0]
    expected = stats.ks_2samp(feature.sample, window, method="asymp")
    assert got.ks_statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    assert got.ks_pvalue == pytest.approx(float(expected.pvalue), abs=1e-6)
    assert got.count == len(window)


BIG = np.finfo(np.float64).max


@pytest.mark.parametrize(
    "reference",
    [
        [-1e308, 0.0, 1e308],  # the span overflows a float
        [-BIG, -1.0, 0.0, 2.0, BIG],
        [1e308],  # one value: a single bucket, far from the window's values
        [-BIG, -BIG, BIG],
    ],
)
def test_baselines_spanning_the_float_range_count_every_value(reference: list[float]) -> None:
    window = [-BIG, -1e308, -3.0, 0.0, 5.0, 1e307, 1e308, BIG]
    profile = build_profile(pa.table({"x": reference}), [])
    (feature,) = profile.features
    assert isinstance(feature, NumericFeature)
    assert np.isfinite(feature.edges).all()
    np.testing.assert_array_equal(
        feature.edges, np.unique(np.quantile(np.array(reference) / 2, np.arange(1, 10) / 10) * 2)
    )
    monitor = DriftMonitor(profile)
    monitor.update(np.array(window)[:, None])
    got = monitor.score(monitor.flush()).features[0]
    expected = stats.ks_2samp(feature.sample, window, method="asymp")
    assert got.count == len(window)
    assert got.ks_statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    assert got.ks_pvalue == pytest.approx(float(expected.pvalue), abs=1e-6)
    assert got.psi is not None and np.isfinite(got.psi)


def test_float32_batches_count_like_float64() -> None:
    profile = _numeric_profile()
    rng = np.random.default_rng(2)
    batch = rng.normal(size=(500, 5)).astype(np.float32)
    a, b = DriftMonitor(profile), DriftMonitor(profile)
    a.update(batch)
    b.update(batch.astype(np.float64))
    np.testing.assert_array_equal(a.flush().cells, b.flush().cells)


def test_merge_equals_one_window_over_the_union() -> None:
    profile = _mixed_profile()
    rng = np.random.default_rng(3)

    def batch(n: int, shift: float) -> dict[str, object]:
        return {
            "x": rng.normal(shift, 1.0, n),
            "colour": rng.choice(["red", "green", "blue", "pink", None], n).tolist(),
        }

    first, second = batch(700, 0.0), batch(400, 0.5)
    one, two, both = DriftMonitor(profile), DriftMonitor(profile), DriftMonitor(profile)
    one.update(first)
    two.update(second)
    both.update(first)
    both.update(second)
    merged = one.flush().merge(two.flush())
    union = both.flush()
    np.testing.assert_array_equal(merged.cells, union.cells)
    assert merged.unseen == union.unseen and merged.rows == union.rows == 1_100
    # Serialised and read back (as another replica would send it) it scores the same.
    wire = WindowState.from_bytes(merged.to_bytes())
    assert both.score(wire).features == both.score(union).features
    assert (wire.start, wire.end) == (merged.start, merged.end)
    assert json.loads(merged.to_bytes())["format"] == "modelplane.drift-window"


def test_merge_rejects_other_baselines() -> None:
    a = DriftMonitor(_numeric_profile(seed=1)).flush()
    b = DriftMonitor(_numeric_profile(seed=2)).flush()
    with pytest.raises(ValueError):
        a.merge(b)
    with pytest.raises(ValueError):
        WindowState.from_dict({"format": "other"})


def test_shifted_window_drifts_and_unshifted_does_not() -> None:
    profile = _numeric_profile(features=4, seed=4)
    monitor = DriftMonitor(profile, thresholds=DriftThresholds(psi=0.2, ks_pvalue=0.01))
    rng = np.random.default_rng(99)
    same = rng.normal(size=(2_000, 5))
    same[:, 4] = rng.integers(0, 5, 2_000)
    report = monitor.score(_counted(monitor, same))
    assert report.drifted_features == []
    assert report.drifted_share == 0.0
    shifted = same.copy()
    shifted[:, :2] += 0.5
    report = monitor.score(_counted(monitor, shifted))
    assert report.drifted_features == ["f0", "f1"]
    assert report.drifted_share == pytest.approx(2 / 5)
    assert report.feature("f0").ks_pvalue < 1e-6


def _counted(monitor: DriftMonitor, batch: np.ndarray) -> WindowState:
    monitor.update(batch)
    return monitor.flush()


def test_categorical_report_with_unseen_categories() -> None:
    profile = _mixed_profile()
    monitor = DriftMonitor(profile)
    colours = ["red"] * 50 + ["purple"] * 30 + [None] * 20
    monitor.update({"x": np.zeros(100), "colour": colours})
    report = monitor.score(monitor.flush())
    colour = report.feature("colour")
    assert colour.kind == "categorical"
    assert colour.unseen_share == pytest.approx(0.3)
    assert colour.missing_share == pytest.approx(0.2)
    expected = stats.chi2_contingency(
        [
            [profile.feature("colour").categories[c] for c in ("blue", "green", "red")] + [0],
            [0, 0, 50, 30],
        ]
    )
    assert colour.chi2_statistic == pytest.approx(float(expected.statistic), rel=1e-9)
    assert colour.drifted


def _summary(profile: BaselineProfile, window: WindowState) -> DriftSummary:
    # What sidecar/managed/window.py reports to the control plane for the one categorical
    # feature "colour": its known counts, unseen total and missing count.
    counts = FeatureCounts(
        "colour",
        tuple(window.categories[0].tolist()),
        sum(window.unseen[0].values()),
        int(window.categorical_missing[0]),
    )
    return DriftSummary(profile.digest(), window.rows, (counts,))


@pytest.mark.parametrize("names", [1, 2, 20, 1000])
def test_categorical_psi_is_the_control_planes_however_unseen_rows_spread(names: int) -> None:
    profile = build_profile(pa.table({"colour": ["red"] * 60 + ["green"] * 40}), [])
    monitor = DriftMonitor(profile)
    unseen = [f"new{i % names}" for i in range(max(20, names))]
    known = ["red"] * (len(unseen) * 12 // 5) + ["green"] * (len(unseen) * 8 // 5)
    monitor.update({"colour": known + unseen})
    window = monitor.flush()
    colour = monitor.score(window).feature("colour")
    assert colour.unseen_share == pytest.approx(0.2)
    expected = feature_psi(_summary(profile, window), profile)["colour"]
    assert expected is not None and expected > 1.0
    assert colour.psi == pytest.approx(expected, rel=1e-12)
    # One unseen bin for chi-square too: scipy on known counts plus the unseen total.
    baseline = profile.feature("colour")
    assert isinstance(baseline, CategoricalFeature)
    table = [[*baseline.categories.values(), 0], [*window.categories[0].tolist(), len(unseen)]]
    reference = stats.chi2_contingency(table)
    assert colour.chi2_statistic == pytest.approx(float(reference.statistic), rel=1e-9)
    assert colour.chi2_pvalue == pytest.approx(float(reference.pvalue), rel=1e-6, abs=1e-300)
    # A fifth of the rows in categories the baseline never saw is drift, by PSI alone too.
    assert colour.drifted
    only_psi = DriftThresholds(psi=0.2, ks_pvalue=None, chi2_pvalue=None)
    assert score_window(monitor.grid, window, only_psi).feature("colour").drifted


def test_csv_true_false_baseline_sees_its_own_rows_as_unchanged() -> None:
    rows = [f"{i / 10},{'True' if i % 3 else 'False'}" for i in range(300)]
    profile = load_baseline(("x,flag\n" + "\n".join(rows) + "\n").encode())
    monitor = DriftMonitor(profile)
    x, flag = zip(*(r.split(",") for r in rows), strict=True)
    # A BYTES input decodes to str: the training rows served back, as text.
    monitor.update({"x": np.array(x, dtype=np.float64), "flag": np.array(flag, dtype=object)})
    report = monitor.score(monitor.flush()).feature("flag")
    assert report.unseen_share == 0.0 and report.psi == 0.0 and not report.drifted


def test_windows_by_count_split_batches() -> None:
    monitor = DriftMonitor(_numeric_profile(), window_rows=300)
    batch = np.random.default_rng(0).normal(size=(700, 5))
    closed = monitor.update(batch)
    assert [w.rows for w in closed] == [300, 300]
    assert monitor.current().rows == 100
    assert monitor.update(batch[:150]) == []
    assert [w.rows for w in monitor.update(batch[:60])] == [300]


def test_windows_by_time() -> None:
    clock = Clock(100.0)
    monitor = DriftMonitor(_numeric_profile(), window_seconds=10.0, clock=clock)
    batch = np.zeros((5, 5))
    assert monitor.update(batch) == []
    clock.now = 105.0
    assert monitor.poll() == []
    clock.now = 131.0
    closed = monitor.update(batch)
    assert len(closed) == 1 and (closed[0].start, closed[0].end) == (100.0, 110.0)
    assert closed[0].rows == 5
    assert monitor.current().start == 130.0 and monitor.current().rows == 5
    clock.now = 200.0
    assert monitor.poll()[0].rows == 5


def test_edge_cases_are_defined() -> None:
    table = pa.table(
        {
            "const": [2.0] * 100,
            "empty": pa.array([None] * 100, pa.float64()),
            "x": np.linspace(0, 1, 100),
        }
    )
    profile = build_profile(table, [])
    monitor = DriftMonitor(profile)
    # Empty window: nothing defined, nothing drifted.
    report = monitor.score(monitor.flush())
    assert report.rows == 0 and report.drifted_share is None
    assert all(f.psi is None and f.ks_pvalue is None and not f.drifted for f in report.features)
    # All-NaN window for x; constant feature unchanged; baseline without values.
    batch = np.column_stack([np.full(40, 2.0), np.arange(40.0), np.full(40, np.nan)])
    monitor.update(batch)
    report = monitor.score(monitor.flush())
    const, empty, x = report.features
    assert const.ks_statistic == 0.0 and const.ks_pvalue == 1.0 and const.psi == 0.0
    assert not const.drifted
    assert empty.ks_statistic is None and empty.psi is None
    assert empty.out_of_range_share == 1.0
    assert x.missing_share == 1.0 and x.count == 0 and x.ks_statistic is None
    assert not x.drifted
    # A constant feature that moves: out of range and flagged by KS.
    monitor.update(np.column_stack([np.full(40, 3.0), np.zeros(40), np.zeros(40)]))
    moved = monitor.score(monitor.flush()).features[0]
    assert moved.out_of_range_share == 1.0 and moved.ks_statistic == 1.0 and moved.drifted


def test_a_window_closed_on_its_boundary_at_an_epoch_moves_on() -> None:
    # At this epoch (start + ws - start) / ws rounds below 1 although start + ws is reached.
    start, ws = 1_700_000_100.0, 0.3
    assert math.floor(((start + ws) - start) / ws) == 0
    clock = Clock(start)
    monitor = DriftMonitor(_numeric_profile(), window_seconds=ws, clock=clock)
    batch = np.ones((5, 5))
    monitor.update(batch)
    clock.now = start + ws
    closed = monitor.update(batch)
    assert [(w.start, w.end, w.rows) for w in closed] == [(start, start + ws, 5)]
    assert monitor.current().start == start + ws
    # Later in the same window: nothing closes, and no window is reported twice.
    clock.now = start + ws + 0.01
    assert monitor.update(batch) == []
    assert monitor.current().start == start + ws and monitor.current().rows == 10
    # Across many boundaries the windows tile time: each starts where the last one ended.
    ends = [start + ws]
    for step in range(2, 400):
        clock.now = start + step * ws
        for window in monitor.update(batch[:1]):
            assert window.start == ends[-1] and window.end > window.start
            ends.append(window.end)
        assert monitor.current().start <= clock.now < monitor.current().start + ws
    assert len(ends) == 399


def test_bad_batches() -> None:
    monitor = DriftMonitor(_numeric_profile())
    with pytest.raises(ValueError):
        monitor.update(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        monitor.update({"f0": [1.0]})
    with pytest.raises(ValueError):
        DriftMonitor(_numeric_profile(), window_rows=0)
    mixed = DriftMonitor(_mixed_profile())
    with pytest.raises(ValueError):
        mixed.update(np.zeros((3, 1)))


def test_concurrent_updates_lose_nothing() -> None:
    monitor = DriftMonitor(_numeric_profile())
    batch = np.random.default_rng(8).normal(size=(200, 5))

    def feed() -> None:
        for _ in range(20):
            monitor.update(batch)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = monitor.flush()
    assert window.rows == 4 * 20 * 200
    assert int(window.cells.sum()) == 4 * 20 * 200 * 5


def test_served_booleans_match_a_baseline_of_true_false_text() -> None:
    # pandas writes booleans as True/False: the profile keeps that text, and a BOOL input
    # serving the same rows must count in those categories rather than as unseen.
    rows = [f"{i},{'True' if i % 4 else 'False'}" for i in range(400)]
    profile = load_baseline(("x,flag\n" + "\n".join(rows) + "\n").encode())
    assert profile.feature("flag").categories == {"False": 100, "True": 300}
    monitor = DriftMonitor(profile)
    flags = np.arange(400) % 4 != 0
    monitor.update({"x": np.arange(400, dtype=np.float64), "flag": flags})
    window = monitor.flush()
    flag = monitor.score(window).feature("flag")
    assert flag.unseen_share == 0.0
    assert dict(zip(("False", "True"), window.categories[0].tolist(), strict=True)) == {
        "False": 100,
        "True": 300,
    }
    assert not flag.drifted
