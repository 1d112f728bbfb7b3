"""An ``async`` prediction log keeps its promise from the first request on: a sidecar killed
with ``kill -9`` (all of its processes at once) loses at most about the last flush interval's
records, even when the kill comes right after the sidecar reported ready. Real sidecar
subprocesses in both observer modes, real ONNX models, log files read back with pyarrow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from sidecar_helpers import raw_request, spawn_sidecar, stub

from modelplane.testing import onnx_models
from sidecar.predlog import read_logs

FLUSH_S = 0.05
#: Beyond the flush interval, what a record may take to reach the disk (the hub's linger,
#: the pipe to the observer process, a busy machine); far below what the first write round
#: used to take (0.4-1 s: pyarrow's first conversion imported pandas).
MARGIN_S = 0.25
#: Seconds of traffic, from the first answer, before the kill.
TRAFFIC_S = 0.4
RUNS = 2


def _answer_then_kill(
    model: Path, log_dir: Path, mode: str
) -> tuple[list[tuple[str, float]], float]:
    """Start a sidecar in a session of its own, send requests back to back from the moment it
    is ready, and kill every process of the session after ``TRAFFIC_S``; returns the ids of
    the answered requests with when each was answered, and when the kill came."""
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu"),
            *("--log-dir", str(log_dir), "--log-flush-interval", f"{FLUSH_S * 1000:g}ms"),
            *("--observer-mode", mode),
        ],
        launch=["setsid"],
    )
    try:
        s = stub(ready["port"])
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        answered: list[tuple[str, float]] = []
        first = None
        while first is None or time.monotonic() - first < TRAFFIC_S:
            rid = f"r{len(answered)}"
            s.ModelInfer(raw_request("m", {"input": ("FP32", x)}, id=rid), timeout=10)
            answered.append((rid, time.monotonic()))
            first = answered[0][1]
        killed_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    return answered, killed_at


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_records_answered_right_after_ready_survive_a_kill(tmp_path: Path, mode: str) -> None:
    model = onnx_models.save(onnx_models.mlp(4, (8,), 2), tmp_path / "m.onnx")
    for run in range(RUNS):
        log_dir = tmp_path / f"log{run}"
        answered, killed_at = _answer_then_kill(model, log_dir, mode)
        due = [(rid, at) for rid, at in answered if killed_at - at > FLUSH_S + MARGIN_S]
        assert due, "no request was answered early enough to be due in the log"
        logged = set(read_logs(log_dir).column("request_id").to_pylist())
        missing = [(rid, round(killed_at - at, 3)) for rid, at in due if rid not in logged]
        assert not missing, (
            f"run {run}: {len(missing)} of {len(due)} requests answered over "
            f"{FLUSH_S + MARGIN_S:g}s before the kill are not in the log; the oldest was "
            f"answered {missing[0][1]}s before it"
        )
