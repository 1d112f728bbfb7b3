"""Once the prediction log's disk fails, a sidecar refuses predictions (UNAVAILABLE,
``PREDICTION_LOG_FAILED``) in ``async`` durability as in ``sync``, in both observer modes and
managed, rather than answering without a record; the records that could not be written are
counted. Real sidecar subprocesses (the managed one on a real control plane) started under a
small ``RLIMIT_FSIZE`` (writes fail with EFBIG), their metrics scraped over HTTP and their log
files read back with pyarrow."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from real_plane import RealPlane, real_plane  # noqa: F401
from sidecar_helpers import FAILING_DISK, health_status, raw_request, spawn_sidecar, stub, wait_for

from modelplane.errors import error_info
from sidecar.predlog import PredictionLogSettings, read_logs


def _dropped(metrics_port: int) -> dict[str, float]:
    """``modelplane_prediction_log_dropped_records_total`` by kind."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text.read().decode()):
        for sample in family.samples:
            if sample.name == "modelplane_prediction_log_dropped_records_total":
                found[sample.labels["kind"]] = sample.value
    return found


def _refused_for_the_log(call: Any) -> bool:
    """Whether ``call()`` was refused because the log failed (False: it was answered)."""
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        info = error_info(exc)
        assert info is not None and info.reason == "PREDICTION_LOG_FAILED", exc.details()
        assert "prediction log" in (exc.details() or "")
        return True
    return False


def _until_not_serving(port: int, send: Any) -> int:
    """Send requests until health turns NOT_SERVING; returns how many were refused."""
    refused = 0
    deadline = time.monotonic() + 60
    while health_status(port) == "SERVING":
        assert time.monotonic() < deadline, "the log never failed"
        refused += sum(_refused_for_the_log(send) for _ in range(20))
        time.sleep(0.05)
    return refused


def _failure_lines(stderr: Path) -> tuple[dict[str, Any], list[str]]:
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    failure = next(line for line in lines if line.get("event") == "prediction_log_failed")
    return failure, [str(line.get("event")) for line in lines]


@pytest.mark.parametrize(
    ("durability", "mode"), [("async", "process"), ("async", "thread"), ("sync", "thread")]
)
def test_after_the_disk_fails_requests_are_refused_and_dropped_records_counted(
    model_dir: Path, tmp_path: Path, durability: str, mode: str
) -> None:
    log_dir = tmp_path / "log"
    stderr = tmp_path / "stderr.log"
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model_dir / "mlp.onnx"), "--listen", "127.0.0.1:0"),
            *("--device", "cpu", "--log-dir", str(log_dir), "--log-flush-interval", "20ms"),
            *("--log-durability", durability, "--observer-mode", mode),
            *("--metrics-listen", "127.0.0.1:0"),
        ],
        stderr=stderr,
        launch=FAILING_DISK,
    )
    try:
        port, metrics_port = ready["port"], ready["metrics_port"]
        s = stub(port)
        x = np.random.default_rng(3).standard_normal((8, 32)).astype(np.float32)

        def send() -> Any:
            return s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)

        _until_not_serving(port, send)
        # From now on no prediction is answered without a record.
        assert all(_refused_for_the_log(send) for _ in range(5))
        # The refusals' records cannot be written either: counted, with what the failure
        # left unwritten (the round being written, at least).
        counts = wait_for(lambda: _dropped_at_least(metrics_port, rejected=5))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    failure, events = _failure_lines(stderr)
    assert failure["errno"] == 27 and failure["unwritten_rows"] >= 1
    assert counts["prediction"] >= failure["unwritten_rows"]
    assert "sidecar is NOT_SERVING: the prediction log failed" in events
    assert read_logs(log_dir).num_rows > 0  # what was written before reads back


def _dropped_at_least(metrics_port: int, rejected: int) -> dict[str, float]:
    counts = _dropped(metrics_port)
    assert counts.get("rejected", 0) >= rejected and counts.get("prediction", 0) >= 1, counts
    return counts


def test_a_managed_sidecar_refuses_requests_once_its_log_failed(
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    plane = real_plane
    plane.deploy({1: artifacts[1]})
    stderr = tmp_path / "stderr.log"
    proc, ready = spawn_sidecar(
        [
            *("--control-plane", plane.address, "--deployment", "fraud"),
            *("--listen", "127.0.0.1:0", "--device", "cpu", "--log-dir", str(tmp_path / "log")),
            *("--log-flush-interval", "20ms", "--cache-dir", str(tmp_path / "cache")),
        ],
        stderr=stderr,
        launch=FAILING_DISK,
    )
    try:
        port = ready["port"]
        s = stub(port)
        x = np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32)

        def send() -> Any:
            return s.ModelInfer(raw_request("fraud", {"input": ("FP32", x)}), timeout=10)

        _until_not_serving(port, send)
        assert all(_refused_for_the_log(send) for _ in range(5))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    failure, events = _failure_lines(stderr)
    assert failure["unwritten_rows"] >= 1
    assert "sidecar is NOT_SERVING: the prediction log failed" in events


def test_requests_are_refused_once_the_observer_process_writing_the_log_ended(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        log_settings=PredictionLogSettings(dir=tmp_path / "log", flush_interval=0.02),
        observer_mode="process",
    )
    child = handle.observer_process
    assert child is not None and child.log_dir is not None
    s = stub(handle.port)
    x = np.zeros((2, 32), np.float32)

    def send() -> Any:
        return s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)

    assert not _refused_for_the_log(send)
    os.kill(child.pid, signal.SIGKILL)

    def not_serving() -> None:
        assert health_status(handle.port) == "NOT_SERVING"

    wait_for(not_serving)
    assert all(_refused_for_the_log(send) for _ in range(3))
