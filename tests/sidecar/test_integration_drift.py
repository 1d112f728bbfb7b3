"""Drift monitoring through a real sidecar: the admin RPC, the CLI and the Prometheus gauges,
checked against the drift engine scoring the same rows itself."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.cli import main
from modelplane.errors import FailedPrecondition
from modelplane.profiles import profile_from_file
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.drift import DriftMonitor
from sidecar.predlog import PredictionLogSettings

NAMES = [f"f{i}" for i in range(32)]
WINDOW = 400


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training data: 3,000 rows of 32 standard normal features and a label, as Parquet."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 32))
    columns = {n: x[:, i] for i, n in enumerate(NAMES)}
    columns["label"] = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path_factory.mktemp("baseline") / "train.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _admin(port: int) -> Any:
    return sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _send(port: int, rows: np.ndarray, per_request: int = 8) -> None:
    s = stub(port)
    for lo in range(0, len(rows), per_request):
        chunk = rows[lo : lo + per_request].astype(np.float32)
        s.ModelInfer(raw_request("mlp", {"input": ("FP32", chunk)}), timeout=30)


def _start(sidecar_factory: Any, model_dir: Path, baseline: Path, **kw: Any) -> Any:
    return sidecar_factory(
        model_dir / "mlp.onnx",
        baseline=baseline,
        baseline_label="label",
        drift_window_rows=WINDOW,
        **kw,
    )


def test_shifted_traffic_is_flagged_exactly_as_the_engine_scores_it(
    model_dir: Path, sidecar_factory: Any, baseline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = _start(sidecar_factory, model_dir, baseline, metrics_listen="127.0.0.1:0")
    rng = np.random.default_rng(5)
    shifted = rng.standard_normal((WINDOW, 32))
    shifted[:, :8] += 1.5  # a quarter of the features move
    _send(handle.port, shifted)

    admin = _admin(handle.port)
    last = wait_for(
        lambda: admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
    )
    reference = DriftMonitor(profile_from_file(baseline, label="label"), window_rows=WINDOW)
    (window,) = reference.update(shifted.astype(np.float32))
    expected = reference.score(window)

    assert last.window == sidecar_pb2.DRIFT_WINDOW_LAST
    assert last.row_count == WINDOW and last.HasField("end_time")
    assert last.baseline_digest == expected.baseline
    assert last.drifted_share == pytest.approx(expected.drifted_share)
    assert [f.name for f in last.features] == NAMES
    flagged = {f.name for f in last.features if f.drifted}
    assert flagged == set(expected.drifted_features)
    assert set(NAMES[:8]) <= flagged
    for got in last.features:
        want = expected.feature(got.name)
        assert got.kind == sidecar_pb2.FEATURE_KIND_NUMERIC
        assert got.psi == pytest.approx(want.psi, rel=1e-9)
        assert got.ks_statistic == pytest.approx(want.ks_statistic, rel=1e-9)
        assert got.ks_pvalue == pytest.approx(want.ks_pvalue, rel=1e-9, abs=1e-300)
        assert got.js_distance == pytest.approx(want.js, rel=1e-9)
        assert got.out_of_range_share == pytest.approx(want.out_of_range_share)

    # The open window: unshifted rows, matching the engine's own count of them.
    calm = rng.standard_normal((120, 32))
    _send(handle.port, calm)
    reference_open = DriftMonitor(profile_from_file(baseline, label="label"))
    reference_open.update(calm.astype(np.float32))
    expected_open = reference_open.score(reference_open.current())

    def current() -> Any:
        report = admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
        assert report.row_count == 120
        return report

    now = wait_for(current)
    assert now.window == sidecar_pb2.DRIFT_WINDOW_CURRENT and not now.HasField("end_time")
    for got in now.features:
        assert got.psi == pytest.approx(expected_open.feature(got.name).psi, rel=1e-9)

    # The gauges show the last closed window.
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    psi_f0 = expected.feature("f0").psi
    line = next(ln for ln in text.splitlines() if ln.startswith("modelplane_drift_psi{"))
    assert 'model="mlp"' in line
    f0 = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("modelplane_drift_psi{") and 'feature="f0"' in ln
    )
    assert float(f0.rsplit(" ", 1)[1]) == pytest.approx(psi_f0)
    share = next(ln for ln in text.splitlines() if ln.startswith("modelplane_drift_drifted_share{"))
    assert float(share.rsplit(" ", 1)[1]) == pytest.approx(expected.drifted_share)
    assert sum(ln.startswith("modelplane_drift_ks_pvalue{") for ln in text.splitlines()) == 32

    # The CLI prints the same report as one JSON document, and as a table.
    address = f"127.0.0.1:{handle.port}"
    capsys.readouterr()
    assert (
        main(["--output", "json", "drift", "report", "--sidecar", address, "--window", "last"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["row_count"] == str(WINDOW)
    assert {f["name"] for f in doc["features"] if f.get("drifted")} == flagged
    assert main(["drift", "report", "--sidecar", address]) == 0
    table = capsys.readouterr().out
    assert "f31" in table and "120 rows" in table


def test_drift_and_logging_together_keep_every_row(
    model_dir: Path, sidecar_factory: Any, baseline: Path, tmp_path: Path
) -> None:
    from sidecar.predlog import read_logs

    handle = _start(
        sidecar_factory,
        model_dir,
        baseline,
        log_settings=PredictionLogSettings(dir=tmp_path, flush_interval=0.05),
        max_batch_size=16,
        max_queue_delay=0.002,
    )
    rows = np.random.default_rng(9).standard_normal((WINDOW, 32))
    _send(handle.port, rows, per_request=3)
    admin = _admin(handle.port)
    last = wait_for(
        lambda: admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
    )
    assert last.row_count == WINDOW
    handle.stop(5)
    table = read_logs(tmp_path)
    assert table.num_rows == WINDOW
    # Feature columns take the baseline's names (the model's one input has 32 columns).
    logged = np.array([table.column(n).to_numpy() for n in NAMES]).T
    np.testing.assert_array_equal(np.sort(logged, axis=0), np.sort(rows.astype(np.float32), axis=0))


def test_drift_report_errors(
    model_dir: Path, sidecar_factory: Any, baseline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = sidecar_factory(model_dir / "mlp.onnx")
    with pytest.raises(grpc.RpcError) as err:
        _admin(plain.port).GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--baseline" in (err.value.details() or "")
    assert main(["drift", "report", "--sidecar", f"127.0.0.1:{plain.port}"]) == 3
    assert "DRIFT_NOT_CONFIGURED" in capsys.readouterr().err

    monitored = _start(sidecar_factory, model_dir, baseline)
    admin = _admin(monitored.port)
    with pytest.raises(grpc.RpcError) as err:
        admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(window=7), timeout=10)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    empty = admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
    assert empty.row_count == 0 and not empty.HasField("drifted_share")

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert main(["--timeout", "3", "drift", "report", "--sidecar", f"127.0.0.1:{free}"]) == 4


def test_a_baseline_the_inputs_cannot_feed_is_refused_at_start(
    model_dir: Path, sidecar_factory: Any, baseline: Path
) -> None:
    # Without leaving the label out, the profile has 33 features: the model provides 32.
    with pytest.raises(FailedPrecondition) as err:
        sidecar_factory(model_dir / "mlp.onnx", baseline=baseline)
    assert err.value.reason == "BASELINE_MISMATCH"
    assert "label" in err.value.message
    with pytest.raises(FailedPrecondition) as err:
        sidecar_factory(model_dir / "mlp.onnx", feature_names=("a", "b"))
    assert err.value.reason == "FEATURE_NAMES_MISMATCH"
