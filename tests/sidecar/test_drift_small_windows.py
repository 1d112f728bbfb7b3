"""Small windows: PSI and Jensen-Shannon read large over a few rows of unchanged traffic, so
below the thresholds' ``min_rows`` they are reported but flag nothing; the KS and chi-square
p-values account for the window's size and still judge."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.profiles import NumericFeature, build_profile
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.drift import DriftMonitor, DriftThresholds


def _profile() -> Any:
    rng = np.random.default_rng(0)
    return build_profile(pa.table({"a": rng.normal(size=20_000)}), [])


def test_small_windows_of_unchanged_traffic_are_judged_by_ks_alone() -> None:
    profile = _profile()
    feature = profile.features[0]
    assert isinstance(feature, NumericFeature)
    monitor = DriftMonitor(profile, window_rows=20)
    assert monitor.thresholds.min_rows == 100
    rng = np.random.default_rng(1)
    large_psi = 0
    for _ in range(100):
        batch = rng.normal(size=(20, 1))
        (window,) = monitor.update(batch)
        report = monitor.score(window)
        got = report.features[0]
        large_psi += got.psi is not None and got.psi >= 0.2
        p = stats.ks_2samp(batch[:, 0], feature.sample, method="asymp").pvalue
        assert got.ks_pvalue == pytest.approx(float(p), abs=1e-6)
        assert got.drifted == (p < 0.05)
        assert report.drifted_share == float(got.drifted)
        assert report.min_rows == 100 and not report.distances_judged
    # The PSI is still reported, and reads as drift in most windows this small.
    assert large_psi > 50


def test_a_small_window_that_moved_entirely_is_still_drifted() -> None:
    monitor = DriftMonitor(_profile())
    monitor.update(np.random.default_rng(2).normal(10.0, 1.0, size=(20, 1)))
    got = monitor.score(monitor.flush()).features[0]
    assert got.out_of_range_share == 1.0 and got.ks_pvalue is not None
    assert got.ks_pvalue < 1e-6 and got.drifted


@pytest.mark.parametrize("kind", ["psi", "js"])
def test_psi_and_js_flag_from_min_rows_on(kind: str) -> None:
    only = (
        DriftThresholds(psi=0.2, ks_pvalue=None, chi2_pvalue=None, min_rows=100)
        if kind == "psi"
        else DriftThresholds(psi=None, ks_pvalue=None, chi2_pvalue=None, js=0.2, min_rows=100)
    )
    shifted = np.random.default_rng(3).normal(1.0, 1.0, size=(100, 1))
    for rows, drifted in ((99, False), (100, True)):
        monitor = DriftMonitor(_profile(), thresholds=only)
        monitor.update(shifted[:rows])
        report = monitor.score(monitor.flush())
        got = report.features[0]
        assert (got.psi if kind == "psi" else got.js) >= 0.2
        assert got.drifted is drifted
        assert report.distances_judged is drifted


def test_a_served_small_window_is_not_flagged_on_its_psi(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    train = pa.table({n: rng.normal(size=5_000) for n in ("a", "b", "c")})
    pq.write_table(train, tmp_path / "train.parquet")
    profile = build_profile(train, [])
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx",
        baseline=tmp_path / "train.parquet",
        drift_window_rows=20,
        metrics_listen="127.0.0.1:0",
    )
    # 20 rows spread like the training data, two per decile but none in the fifth and four in
    # the sixth: the empty bin alone gives a PSI near 0.7, while KS stays near 0.1.
    per_decile = [2, 2, 2, 2, 0, 4, 2, 2, 2, 2]
    quantiles = [(d + (k + 0.5) / n) / 10 for d, n in enumerate(per_decile) for k in range(n)]
    column = stats.norm.ppf(quantiles)
    rows = np.column_stack([rng.permutation(column) for _ in range(3)]).astype(np.float32)
    for j, name in enumerate("abc"):
        feature = profile.feature(name)
        assert isinstance(feature, NumericFeature)
        assert stats.ks_2samp(rows[:, j], feature.sample, method="asymp").pvalue > 0.05
    s = stub(handle.port)
    for lo in range(0, 20, 5):
        s.ModelInfer(raw_request("id_fp32", {"x": ("FP32", rows[lo : lo + 5])}), timeout=30)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    last = wait_for(
        lambda: admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
    )
    assert last.row_count == 20
    assert max(f.psi for f in last.features) >= 0.2  # reported, not judged
    assert not any(f.drifted for f in last.features)
    assert last.drifted_share == 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    share = next(ln for ln in text.splitlines() if ln.startswith("modelplane_drift_drifted_share{"))
    assert float(share.rsplit(" ", 1)[1]) == 0.0
    flags = [ln for ln in text.splitlines() if ln.startswith("modelplane_drift_feature_drifted{")]
    assert len(flags) == 3 and all(float(ln.rsplit(" ", 1)[1]) == 0.0 for ln in flags)


def test_drift_min_rows_lets_psi_judge_smaller_windows(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    """``--drift-min-rows 20`` with 20-row windows: the PSI of a window that moved whole
    flags its features."""
    rng = np.random.default_rng(5)
    train = pa.table({n: rng.normal(size=5_000) for n in ("a", "b", "c")})
    pq.write_table(train, tmp_path / "train.parquet")
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx",
        baseline=tmp_path / "train.parquet",
        drift_window_rows=20,
        drift_min_rows=20,
        drift_ks_pvalue=None,
    )
    rows = (rng.normal(size=(20, 3)) + 3.0).astype(np.float32)
    stub(handle.port).ModelInfer(raw_request("id_fp32", {"x": ("FP32", rows)}), timeout=30)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    last = wait_for(
        lambda: admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
    )
    assert last.row_count == 20
    assert all(f.drifted for f in last.features) and last.drifted_share == 1.0
