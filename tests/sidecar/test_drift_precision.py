"""Served FP32 and FP16 inputs are compared with a float64 baseline at their own precision:
``float32(0.7)`` is the training data's 0.7, not a value just below it. Figures are checked
against scipy on the served values and the baseline rounded to their type. Managed sidecars
run on a real control plane, which builds each version's baseline from the train dataset
registered with it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from scipy import special, stats
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.profiles import (
    PSI_EPSILON,
    BaselineProfile,
    NumericFeature,
    bin_counts,
    build_profile,
)
from modelplane.testing import onnx_models
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.drift import DriftMonitor

#: Decimals that float32 and float16 cannot hold exactly (0.5 aside).
DECIMALS = np.round(np.arange(1, 10) / 10, 1)
TYPES = {"FP32": np.float32, "FP16": np.float16}


def _rounded(values: np.ndarray, dtype: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(dtype).astype(np.float64)


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI with scipy's relative entropy: sum((c - r) ln(c / r)) = KL(c||r) + KL(r||c)."""
    r = np.maximum(reference / reference.sum(), PSI_EPSILON)
    c = np.maximum(current / current.sum(), PSI_EPSILON)
    return float(np.sum(special.rel_entr(c, r) + special.rel_entr(r, c)))


def _expected(feature: NumericFeature, live: np.ndarray) -> dict[str, float]:
    """What scipy gives on the served values against the baseline rounded to their type."""
    dtype = live.dtype
    values = live.astype(np.float64)
    values = values[np.isfinite(values)]
    edges = _rounded(feature.edges, dtype)
    ks = stats.ks_2samp(values, _rounded(feature.sample, dtype), method="asymp")
    assert feature.min is not None and feature.max is not None
    low, high = _rounded([feature.min, feature.max], dtype)
    return {
        "bins": bin_counts(values, edges),
        "psi": _psi(feature.bin_counts, bin_counts(values, edges)),
        "ks": float(ks.statistic),
        "p": float(ks.pvalue),
        "out": float(((values < low) | (values > high)).sum()) / len(live),
    }


def _decimals_profile(seed: int = 0) -> BaselineProfile:
    rng = np.random.default_rng(seed)
    return build_profile(pa.table({"x": rng.choice(DECIMALS, 5_000)}), [])


def _window_bins(monitor: DriftMonitor, window: Any, feature: int = 0) -> np.ndarray:
    """The bin counts the sidecar reports to the control plane (sidecar.managed.window)."""
    grid = monitor.grid
    cells = window.cells[grid.cell_offsets[feature] : grid.cell_offsets[feature + 1]]
    g = grid.numeric[feature]
    return np.bincount(g.cell_to_bin, weights=cells, minlength=len(g.feature.edges) + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", ["matrix", "column"])
def test_narrow_values_of_the_training_distribution_read_as_unchanged(
    dtype: Any, shape: str
) -> None:
    profile = _decimals_profile()
    feature = profile.features[0]
    assert isinstance(feature, NumericFeature)
    live = np.random.default_rng(1).choice(DECIMALS, 1_000).astype(dtype)
    monitor = DriftMonitor(profile)
    monitor.update(live.reshape(-1, 1) if shape == "matrix" else {"x": live})
    window = monitor.flush()
    got = monitor.score(window).features[0]
    want = _expected(feature, live)
    np.testing.assert_array_equal(_window_bins(monitor, window), want["bins"])
    assert got.psi == pytest.approx(want["psi"], rel=1e-9)
    assert got.ks_statistic == pytest.approx(want["ks"], abs=1e-12)
    assert got.ks_pvalue == pytest.approx(want["p"], abs=1e-6)
    assert got.out_of_range_share == want["out"] == 0.0
    assert got.psi < 0.05 and got.ks_pvalue > 0.5 and not got.drifted


def test_points_that_round_to_one_value_keep_the_bins_and_score_as_one() -> None:
    # Edges 0.5 and 0.5 + 1e-12 become one float32 value: the bin between them stays (the
    # control plane compares per-bin counts) but no float32 value can fall in it.
    close = 0.5 + 1e-12
    sample = np.array([0.25, 0.5, close, close, 1.0, 1.0 + 2e-12, 1.5, 2.0 + 1e-9])
    feature = NumericFeature(
        name="x",
        count=len(sample),
        missing=0,
        min=float(sample[0]),
        max=float(sample[-1]),
        mean=float(sample.mean()),
        std=float(sample.std()),
        edges=np.array([0.5, close, 1.0, 1.7]),
        bin_counts=bin_counts(sample, np.array([0.5, close, 1.0, 1.7])),
        sample=sample,
    )
    profile = BaselineProfile(row_count=len(sample), features=(feature,))
    live = np.array(
        [0.1, 0.25, 0.4, 0.5, 0.5, close, 0.7, 1.0, 1.0, 1.0 + 2e-12, 1.2, 1.5, 1.7, 2.0, 2.5],
        dtype=np.float32,
    )
    live = np.concatenate([live, [np.nan, np.inf]]).astype(np.float32)
    monitor = DriftMonitor(profile)
    monitor.update(live.reshape(-1, 1))
    window = monitor.flush()
    got = monitor.score(window).features[0]
    want = _expected(feature, live)
    bins = _window_bins(monitor, window)
    np.testing.assert_array_equal(bins, want["bins"])
    assert bins[1] == 0 and len(bins) == 5
    assert got.ks_statistic == pytest.approx(want["ks"], abs=1e-12)
    assert got.ks_pvalue == pytest.approx(want["p"], abs=1e-6)
    assert got.psi == pytest.approx(want["psi"], rel=1e-9)
    assert got.out_of_range_share == pytest.approx(want["out"])
    assert got.missing_share == pytest.approx(2 / len(live))


def test_float64_values_still_compare_exactly() -> None:
    profile = _decimals_profile()
    feature = profile.features[0]
    assert isinstance(feature, NumericFeature)
    # Float64 values a float32 rounding away from the decimals: not the decimals.
    live = np.random.default_rng(2).choice(DECIMALS, 1_000)
    widened = live.astype(np.float32).astype(np.float64)
    monitor = DriftMonitor(profile)
    monitor.update(widened.reshape(-1, 1))
    got = monitor.score(monitor.flush()).features[0]
    ks = stats.ks_2samp(widened, feature.sample, method="asymp")
    assert got.ks_statistic == pytest.approx(float(ks.statistic), abs=1e-12)
    assert got.psi == pytest.approx(_psi(feature.bin_counts, bin_counts(widened, feature.edges)))


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_a_served_narrow_input_reads_its_training_rows_as_unchanged(
    datatype: str, model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    train = pa.table({n: rng.choice(DECIMALS, 4_000) for n in ("a", "b", "c")})
    pq.write_table(train, tmp_path / "train.parquet")
    profile = build_profile(train, [])
    handle = sidecar_factory(
        model_dir / f"id_{datatype.lower()}.onnx", baseline=tmp_path / "train.parquet"
    )
    live = rng.choice(DECIMALS, (1_000, 3)).astype(TYPES[datatype])
    s = stub(handle.port)
    name = f"id_{datatype.lower()}"
    for lo in range(0, len(live), 100):
        s.ModelInfer(raw_request(name, {"x": (datatype, live[lo : lo + 100])}), timeout=30)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))

    def report() -> Any:
        got = admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
        assert got.row_count == len(live)
        return got

    got = wait_for(report)
    assert got.drifted_share == 0.0
    for j, feat in enumerate(got.features):
        feature = profile.feature(feat.name)
        assert isinstance(feature, NumericFeature)
        want = _expected(feature, live[:, j])
        assert feat.psi == pytest.approx(want["psi"], rel=1e-9)
        assert feat.ks_statistic == pytest.approx(want["ks"], abs=1e-12)
        assert feat.ks_pvalue == pytest.approx(want["p"], abs=1e-6)
        assert not feat.drifted


def _champion_drift(reports: list[Any]) -> list[Any]:
    """The champion's drift counts in the stored reports that have some."""
    return [a.drift for r in reports for a in r.arms if a.arm == "champion" and a.drift]


def test_a_managed_sidecar_reports_fp32_rows_in_the_baselines_bins(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    plane = real_plane
    rng = np.random.default_rng(4)
    columns = {f"f{j}": rng.choice(DECIMALS, 3_000) for j in range(8)}
    # The profile the control plane builds of the train dataset (its default bins and sample).
    profile = build_profile(pa.table(columns), list(columns))
    plane.deploy({1: artifacts[1]}, trains={1: pa.table(columns)})
    handle = real_managed()
    assert handle.wait_ready(60)
    live = rng.choice(DECIMALS, (400, 8)).astype(np.float32)
    s = stub(handle.port)
    for lo in range(0, len(live), 50):
        s.ModelInfer(raw_request("fraud", {"input": ("FP32", live[lo : lo + 50])}), timeout=30)
    reports = plane.wait_reports(lambda rs: sum(d.rows for d in _champion_drift(rs)) >= 400)
    drift = [d for d in _champion_drift(reports) if d.rows]
    assert {d.baseline_sha256 for d in drift} == {hashlib.sha256(profile.to_bytes()).hexdigest()}
    for j, name in enumerate(columns):
        feature = profile.feature(name)
        assert isinstance(feature, NumericFeature)
        counts = np.sum([d.features[j].counts for d in drift], axis=0)
        np.testing.assert_array_equal(counts, _expected(feature, live[:, j])["bins"])
        # Compared with the profile's counts, as the control plane does: unchanged traffic.
        assert _psi(feature.bin_counts, counts) < 0.1
        assert sum(d.features[j].out_of_range + d.features[j].missing for d in drift) == 0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dense_baselines_whose_values_round_together_score_as_scipy(seed: int, dtype: Any) -> None:
    # Training values in clusters narrower than the type's spacing: many sample values and
    # edges round to one value; the window mixes those values, others and non-finite ones.
    rng = np.random.default_rng(seed)
    centres = rng.choice(np.linspace(-3, 3, 40), 3_000)
    train = centres * (1 + rng.uniform(-1e-9, 1e-9, 3_000)) + rng.normal(0, 1, 3_000) * (
        rng.random(3_000) < 0.3
    )
    profile = build_profile(pa.table({"x": train}), [], bins=12, sample_size=1_500, seed=seed)
    feature = profile.features[0]
    assert isinstance(feature, NumericFeature)
    live = np.concatenate(
        [rng.choice(train, 800), rng.normal(0, 2, 200), [np.nan, np.inf, -np.inf]]
    ).astype(dtype)
    monitor = DriftMonitor(profile)
    monitor.update(live[:500].reshape(-1, 1))
    monitor.update({"x": live[500:]})
    window = monitor.flush()
    got = monitor.score(window).features[0]
    want = _expected(feature, live)
    np.testing.assert_array_equal(_window_bins(monitor, window), want["bins"])
    assert got.ks_statistic == pytest.approx(want["ks"], abs=1e-12)
    assert got.ks_pvalue == pytest.approx(want["p"], abs=1e-6)
    assert got.psi == pytest.approx(want["psi"], rel=1e-9)
    assert got.out_of_range_share == pytest.approx(want["out"])
    assert got.missing_share == pytest.approx(3 / len(live))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_values_exact_at_their_precision_are_counted_as_float64_ones(dtype: Any) -> None:
    """A baseline whose every point the narrow type holds exactly (small integers) takes the
    narrow matrix as it is: float16 included, and with the same counts as float64."""
    rng = np.random.default_rng(5)
    profile = build_profile(
        pa.table({n: rng.integers(0, 8, 4_000).astype(np.float64) for n in ("a", "b")}), []
    )
    live = rng.integers(0, 8, (300, 2)).astype(np.float64)
    narrow, wide = DriftMonitor(profile), DriftMonitor(profile)
    narrow.update(live.astype(dtype))
    wide.update(live)
    got, want = narrow.score(narrow.flush()), wide.score(wide.flush())
    assert got.rows == want.rows == len(live)
    for g, w in zip(got.features, want.features, strict=True):
        assert (g.name, g.psi, g.ks_statistic) == (w.name, w.psi, w.ks_statistic)


def test_a_managed_fp16_model_on_an_integer_baseline_keeps_counting_and_logging(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A drift update that cannot run must never take the run's request counts with it; here
    it runs, and the rows are counted in the report and in drift."""
    rng = np.random.default_rng(4)
    model = onnx_models.save(
        onnx_models.identity_model("FP16", ["n", 3]), tmp_path / "m.onnx"
    ).read_bytes()
    columns = {f"x_{j}": rng.integers(0, 8, 3_000).astype(np.float64) for j in range(3)}
    plane = real_plane
    plane.deploy({1: model}, trains={1: pa.table(columns)})
    handle = real_managed()
    assert handle.wait_ready(60)
    assert handle.manager.table.champion.feature_names == list(columns)
    live = rng.integers(0, 8, (200, 3)).astype(np.float16)
    s = stub(handle.port)
    for lo in range(0, len(live), 50):
        s.ModelInfer(raw_request("fraud", {"x": ("FP16", live[lo : lo + 50])}), timeout=30)
    reports = plane.wait_reports(
        lambda rs: sum(a.rows for r in rs for a in r.arms if a.arm == "champion") >= 200
    )
    arms = [a for r in reports for a in r.arms if a.arm == "champion"]
    assert sum(a.rows for a in arms) == 200
    assert sum(a.drift.rows for a in arms if a.drift) == 200
