"""The prediction log and drift monitor in their own process (``--observers process``): the
same log rows and drift figures as in process, metrics and reports answered through the
child, and what happens when either side dies."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sidecar_helpers import (
    FAILING_DISK,
    children,
    health_status,
    raw_request,
    spawn_sidecar,
    stub,
    wait_for,
)

from modelplane.errors import error_info
from modelplane.testing.processes import alive
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.observer_process import offloaded
from sidecar.predlog import PredictionLogSettings, list_log_files, read_file_batches, read_logs
from sidecar.settings import SidecarSettings

WINDOW = 300


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3000, 32))
    path = tmp_path_factory.mktemp("baseline") / "train.parquet"
    pq.write_table(pa.table({f"x_{i}": x[:, i] for i in range(32)}), path)
    return path


def _admin(port: int) -> Any:
    return sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _send(port: int, rows: np.ndarray, per_request: int = 5) -> list[str]:
    s = stub(port)
    ids = []
    for lo in range(0, len(rows), per_request):
        ident = f"req-{lo}"
        chunk = rows[lo : lo + per_request].astype(np.float32)
        s.ModelInfer(raw_request("mlp", {"input": ("FP32", chunk)}, id=ident), timeout=30)
        ids.append(ident)
    return ids


def _last_report(port: int, rows: int) -> Any:
    def check() -> Any:
        report = _admin(port).GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_LAST), timeout=10
        )
        assert report.row_count == rows
        return report

    return wait_for(check)


def test_log_and_drift_in_a_child_process_match_the_in_process_ones(
    model_dir: Path, sidecar_factory: Any, baseline: Path, tmp_path: Path
) -> None:
    rows = np.random.default_rng(5).normal(0.3, 1.2, size=(WINDOW + 45, 32))
    results = {}
    for mode in ("process", "thread"):
        handle = sidecar_factory(
            model_dir / "mlp.onnx",
            baseline=baseline,
            drift_window_rows=WINDOW,
            metrics_listen="127.0.0.1:0",
            observer_mode=mode,
            log_settings=PredictionLogSettings(dir=tmp_path / mode, flush_interval=0.05),
        )
        child = handle.observer_process
        assert (child is not None) == (mode == "process")
        if child is not None:
            assert child.alive and child.pid != os.getpid()
        ids = _send(handle.port, rows)
        last = _last_report(handle.port, WINDOW)
        current = wait_for(
            lambda h=handle: _check_rows(h.port, sidecar_pb2.DRIFT_WINDOW_CURRENT, 45)
        )
        metrics = wait_for(lambda h=handle: _scrape_written(h.metrics_port, len(rows)))
        handle.stop(0)
        if child is not None:
            assert not child.alive
        table = read_logs(tmp_path / mode)
        results[mode] = (ids, last, current, metrics, table)
    ids, last, current, metrics, table = results["process"]
    ids_t, last_t, current_t, metrics_t, table_t = results["thread"]
    assert ids_t == ids
    assert sorted(set(table.column("request_id").to_pylist())) == sorted(ids)
    assert table.num_rows == len(rows)
    keep = [c for c in table.column_names if c not in ("timestamp", "latency_s")]
    assert (
        table.select(keep).sort_by("request_id").equals(table_t.select(keep).sort_by("request_id"))
    )
    for a, b in ((last, last_t), (current, current_t)):
        assert [(f.name, f.psi, f.ks_statistic, f.drifted) for f in a.features] == [
            (f.name, f.psi, f.ks_statistic, f.drifted) for f in b.features
        ]
    # The child's metrics are served by the sidecar's endpoint, as in process.
    assert metrics == metrics_t
    assert metrics["modelplane_drift_window_rows"] == float(WINDOW)


def _check_rows(port: int, window: Any, rows: int) -> Any:
    report = _admin(port).GetDriftReport(
        sidecar_pb2.GetDriftReportRequest(window=window), timeout=10
    )
    assert report.row_count == rows
    return report


def _scrape_written(port: int, rows: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        wanted = name == "modelplane_drift_window_rows" or (
            name == "modelplane_prediction_log_records_total" and 'kind="prediction"' in line
        )
        if wanted:
            found[name] = float(line.rsplit(" ", 1)[1])
    assert found.get("modelplane_prediction_log_records_total") == float(rows), found
    return found


def test_a_dead_observer_process_turns_the_sidecar_not_serving(
    model_dir: Path, sidecar_factory: Any, baseline: Path
) -> None:
    handle = sidecar_factory(model_dir / "mlp.onnx", baseline=baseline)
    child = handle.observer_process
    assert child is not None and health_status(handle.port) == "SERVING"
    os.kill(child.pid, signal.SIGKILL)

    def not_serving() -> None:
        assert health_status(handle.port) == "NOT_SERVING"

    wait_for(not_serving)
    # Inference still answers; the drift report says why it cannot.
    x = np.zeros((2, 32), np.float32)
    stub(handle.port).ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        _admin(handle.port).GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err.value)
    assert info is not None and info.reason == "OBSERVERS_UNAVAILABLE"
    assert "observer process" in (err.value.details() or "")


def test_a_stalled_observer_process_turns_the_sidecar_not_serving_and_stop_ends(
    model_dir: Path, baseline: Path, tmp_path: Path
) -> None:
    """A child that is alive but stops reading (stopped here; a hung disk in life): queries
    give up in time, the sidecar turns NOT_SERVING, and SIGTERM still ends it."""
    import threading

    proc, ready, _, child = _spawn_logged(
        model_dir,
        baseline,
        tmp_path / "log",
        "--drain-seconds",
        "1s",
        env={"MODELPLANE_OBSERVER_STALL_SECONDS": "2"},
    )
    port = ready["port"]
    os.kill(child, signal.SIGSTOP)
    stop = threading.Event()

    def traffic() -> None:
        s = stub(port)
        x = np.zeros((64, 32), np.float32)
        while not stop.is_set():
            with contextlib.suppress(grpc.RpcError):
                s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=2)

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:

        def not_serving() -> None:
            assert health_status(port) == "NOT_SERVING"

        wait_for(not_serving, timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            _admin(port).GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=30)
        # Known not to read: answered UNAVAILABLE, not DEADLINE_EXCEEDED after the query's
        # timeout.
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stopped reading" in (err.value.details() or "")
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        assert not alive(child)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_drift_goes_on_in_the_child_after_its_log_fails(
    model_dir: Path, baseline: Path, tmp_path: Path
) -> None:
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model_dir / "mlp.onnx"), "--listen", "127.0.0.1:0"),
            *("--device", "cpu", "--log-dir", str(tmp_path / "log"), "--baseline", str(baseline)),
            *("--log-flush-interval", "20ms", "--drift-window-rows", "1000000"),
        ],
        launch=FAILING_DISK,
        stderr=tmp_path / "stderr.log",
    )
    try:
        port = ready["port"]
        s = stub(port)
        x = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
        deadline = time.monotonic() + 60
        answered = 0
        while health_status(port) == "SERVING" and time.monotonic() < deadline:
            try:
                s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=30)
                answered += 64
            except grpc.RpcError as exc:  # refused once the log failed
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        assert health_status(port) == "NOT_SERVING"
        # Requests are refused now (their answers would go unlogged), but the child's drift
        # goes on: its window holds every row answered, those after the failure included.
        with pytest.raises(grpc.RpcError):
            s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=30)
        wait_for(lambda: _check_rows(port, sidecar_pb2.DRIFT_WINDOW_CURRENT, answered))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _spawn_logged(
    model_dir: Path, baseline: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> Any:
    """A sidecar subprocess with the log and drift on; with its ready line, its children
    and which of them is the observer process (spawn also starts multiprocessing's resource
    tracker)."""
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model_dir / "mlp.onnx"), "--listen", "127.0.0.1:0"),
            *("--device", "cpu", "--log-dir", str(log_dir), "--baseline", str(baseline)),
            *extra,
        ],
        env=env,
    )
    kids = children(proc.pid)
    spawned = [c for c in kids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(spawned) == 1, kids
    return proc, ready, kids, spawned[0]


def test_the_observer_process_ends_and_keeps_its_files_when_the_sidecar_is_killed(
    model_dir: Path, baseline: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    proc, ready, kids, _ = _spawn_logged(
        model_dir, baseline, log_dir, "--log-flush-interval", "50ms"
    )
    try:
        ids = _send(ready["port"], np.ones((200, 32)))
        # The child's drift window has counted every row: all records crossed the pipe.
        wait_for(lambda: _check_rows(ready["port"], sidecar_pb2.DRIFT_WINDOW_CURRENT, 200))
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 15
        while any(map(alive, kids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, kids))
    finally:
        if proc.poll() is None:
            proc.kill()
    for path in list_log_files(log_dir):
        for batch in read_file_batches(path):
            assert batch.num_rows >= 0
    # Everything handed to the child before the kill was written when it saw the pipe close.
    assert sorted(set(read_logs(log_dir).column("request_id").to_pylist())) == sorted(ids)


def test_signals_to_the_process_group_leave_the_child_to_its_parent(
    model_dir: Path, baseline: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    proc, ready, _, child = _spawn_logged(model_dir, baseline, log_dir)
    try:
        ids = _send(ready["port"], np.ones((50, 32)))
        # What Ctrl-C or `kill -TERM -PGID` would deliver to the child as well.
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        time.sleep(0.5)
        assert alive(child)
        assert health_status(ready["port"]) == "SERVING"
        ids += _send(ready["port"], np.zeros((50, 32)), per_request=7)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    assert read_logs(log_dir).num_rows == 100
    assert set(read_logs(log_dir).column("request_id").to_pylist()) == set(ids)


@pytest.mark.parametrize(
    ("observers", "log", "durability", "baseline", "expected"),
    [
        ("process", True, "async", False, True),
        ("process", False, "async", True, True),
        ("process", True, "async", True, True),
        ("process", True, "sync", True, False),
        ("process", False, "async", False, False),
        ("thread", True, "async", True, False),
    ],
)
def test_which_observers_run_in_their_own_process(
    tmp_path: Path, observers: str, log: bool, durability: str, baseline: bool, expected: bool
) -> None:
    settings = SidecarSettings(
        model=tmp_path / "m.onnx",
        observer_mode=observers,  # type: ignore[arg-type]
        baseline=tmp_path / "b.parquet" if baseline else None,
    )
    log_settings = PredictionLogSettings(dir=tmp_path if log else None, durability=durability)  # type: ignore[arg-type]
    assert offloaded(settings, log_settings) is expected


def test_an_unknown_observers_choice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="observer_mode"):
        SidecarSettings(model=tmp_path / "m.onnx", observer_mode="elsewhere")  # type: ignore[arg-type]
