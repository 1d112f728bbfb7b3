"""Which process ids a sidecar of several workers shows, with drift and the log offloaded to
each worker's observer process (``--observer-mode process``, the default): the ``pid`` label
of each worker's drift gauges is the one its ``GetDriftReport`` names (``gauges_pid``), the
log's file names carry the worker's pid, and an observer process that dies leaves no drift
series behind."""

from __future__ import annotations

import math
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import raw_request, spawn_sidecar, wait_for

from modelplane.cli import main
from modelplane.oip import grpc_service_pb2_grpc
from modelplane.testing import onnx_models
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.predlog import list_log_files

NAMES = [f"f{i}" for i in range(32)]
WINDOW = 40
PER_REQUEST = 8
#: Fresh channels, each of one window's rows: enough that both workers close windows.
CHANNELS = 12
#: A channel of its own (not shared with earlier ones), so that it opens a new connection,
#: which the kernel hands to either worker.
OWN = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A sidecar of two workers that monitor drift and log predictions, after traffic; its
    ready line, log folder and each worker's last closed window's report by worker pid."""
    folder = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 32))
    baseline = folder / "train.parquet"
    pq.write_table(pa.table({n: x[:, i] for i, n in enumerate(NAMES)}), baseline)
    model = onnx_models.save(onnx_models.mlp(), folder / "mlp.onnx")
    log_dir = folder / "log"
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model), "--model-name", "mlp", "--device", "cpu"),
            *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--workers", "2"),
            *("--baseline", str(baseline), "--drift-window-rows", str(WINDOW)),
            *("--log-dir", str(log_dir), "--log-flush-interval", "50ms"),
        ]
    )
    try:
        address = f"127.0.0.1:{ready['port']}"
        for k in range(CHANNELS):
            # Each channel's traffic shifted its own way: every window scores differently.
            rows = rng.normal(0.1 * k, 1.0 + 0.05 * k, size=(WINDOW, 32)).astype(np.float32)
            with grpc.insecure_channel(address, options=OWN) as channel:
                s = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
                for lo in range(0, WINDOW, PER_REQUEST):
                    chunk = rows[lo : lo + PER_REQUEST]
                    s.ModelInfer(
                        raw_request("mlp", {"input": ("FP32", chunk)}, id=f"c{k}-{lo}"),
                        timeout=30,
                    )
        # The observer processes take the rows after they were answered: read the reports
        # once two rounds of them, 0.3 s apart, agree (every window has closed by then).
        reports = _reports(address)
        for _ in range(50):
            time.sleep(0.3)
            again = _reports(address)
            if again == reports:
                break
            reports = again
        assert again == reports, "the workers' last windows kept changing"
        yield {"ready": ready, "address": address, "reports": reports, "log_dir": log_dir}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except Exception:
                proc.kill()


def _reports(address: str) -> dict[int, Any]:
    """Each worker's report of its last closed window, by worker pid."""
    reports: dict[int, Any] = {}
    for _ in range(200):
        if len(reports) == 2:
            break
        with grpc.insecure_channel(address, options=OWN) as channel:
            report = sidecar_pb2_grpc.SidecarAdminServiceStub(channel).GetDriftReport(
                sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST),
                timeout=10,
            )
        reports[report.worker_pid] = report
    assert len(reports) == 2, "the calls reached one worker only"
    return reports


def _drift_samples(metrics_port: int) -> list[Any]:
    """The drift gauges' samples (the failed-rows counter is summed over the processes)."""
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name.startswith("modelplane_drift_") and family.type == "gauge"
        for sample in family.samples
    ]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_each_workers_gauges_carry_the_pid_its_report_names(workers: dict[str, Any]) -> None:
    reports = workers["reports"]
    samples = _drift_samples(workers["ready"]["metrics_port"])
    by_pid: dict[str, dict[tuple[str, str], float]] = {}
    for sample in samples:
        pid = sample.labels["pid"]
        by_pid.setdefault(pid, {})[(sample.name, sample.labels.get("feature", ""))] = sample.value
    named = {str(report.gauges_pid) for report in reports.values()}
    # One set of series per worker, labelled with the pid its report names, and no others.
    assert len(named) == 2 and set(by_pid) == named, (sorted(by_pid), sorted(named))
    for report in reports.values():
        # Under --observer-mode process the observer process sets them, not the worker.
        assert report.gauges_pid != report.worker_pid
        series = by_pid[str(report.gauges_pid)]
        assert series[("modelplane_drift_window_rows", "")] == report.row_count == WINDOW
        assert _same(series[("modelplane_drift_drifted_share", "")], report.drifted_share)
        for feat in report.features:
            assert _same(series[("modelplane_drift_psi", feat.name)], feat.psi), feat.name
            assert series[("modelplane_drift_feature_drifted", feat.name)] == float(feat.drifted)
    # The workers' windows differ: a series matched to the wrong worker would not pass above.
    first, second = (list(r.features) for r in reports.values())
    assert [f.psi for f in first] != [f.psi for f in second]


def test_the_cli_names_the_gauges_pid(
    workers: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["drift", "report", "--sidecar", workers["address"], "--window", "last"]) == 0
    found = re.search(r"worker pid (\d+), drift gauges pid (\d+)", capsys.readouterr().out)
    assert found is not None
    worker, gauges = int(found[1]), int(found[2])
    assert workers["reports"][worker].gauges_pid == gauges


def test_log_file_names_carry_the_workers_pids(workers: dict[str, Any]) -> None:
    def written() -> set[int]:
        files = list_log_files(workers["log_dir"])
        pids = {int(p.name.split("-p")[1].split("-")[0]) for p in files}
        assert len(pids) == 2, pids
        return pids

    # Each worker's observer process writes its files, named after the worker.
    assert wait_for(written) == set(workers["reports"])


def test_a_dead_observer_process_leaves_no_drift_series_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker removes the live gauge files of an observer process that died (prometheus
    multiprocess mode, as under ``--workers N``)."""
    from prometheus_client import CollectorRegistry

    from sidecar.observer_process import ObserverProcess
    from sidecar.observers import BatchRecord, gather
    from sidecar.settings import SidecarSettings
    from sidecar.signature import DTYPES, Signature, TensorSpec

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    rng = np.random.default_rng(0)
    baseline = tmp_path / "train.parquet"
    pq.write_table(pa.table({n: rng.normal(size=2000) for n in ("a", "b", "c")}), baseline)
    settings = SidecarSettings(model=tmp_path / "m.onnx", baseline=baseline, drift_window_rows=50)
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 3), DTYPES["FP32"]),),
        outputs=(TensorSpec("y", "FP32", (-1, 1), DTYPES["FP32"]),),
    )
    failures: list[BaseException] = []
    remote = ObserverProcess.start(settings, None, signature, CollectorRegistry(), failures.append)
    try:
        live = metrics_dir / f"gauge_liveall_{remote.pid}.db"
        # The child's drift gauges are made when its first window closes, in a file under
        # its pid.
        rows = rng.normal(size=(50, 3)).astype(np.float32)
        record = BatchRecord(
            model="m",
            version="1",
            provider="CPUExecutionProvider",
            inputs={"x": rows},
            outputs={"y": rows[:, :1]},
            request_ids=["r"],
            trace_ids=[""],
            row_counts=[50],
            latencies_s=[0.001],
            status=["OK"],
            compute_s=0.001,
        )
        remote.on_runs(gather([record]))

        def made() -> None:
            assert live.exists(), sorted(os.listdir(metrics_dir))

        wait_for(made)
        os.kill(remote.pid, signal.SIGKILL)

        def ended() -> None:
            assert failures

        wait_for(ended)
        assert not live.exists()
    finally:
        remote.close()
