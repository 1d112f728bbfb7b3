"""A sidecar whose stderr cannot be written (a full disk under ``2>>file``, a log collector
gone from the other end of a pipe) serves as it would otherwise: its log lines are dropped,
never raised. A refusal keeps its status and ErrorInfo, and one SIGTERM drains and stops it.
A real sidecar subprocess; its stderr is a pipe whose reading end the test closes once the
sidecar is ready, so each later write fails with EPIPE."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import PYTHON, ROOT, raw_request, stub

from modelplane.errors import error_info
from modelplane.server import logging as server_logging
from sidecar.predlog import list_log_files, read_logs

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _serve_with_stderr_gone(
    model: Path, log_dir: Path
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A sidecar serving ``model``, ready, whose stderr no longer has a reader; and its ready
    line (``port``, ``metrics_port``)."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model),
         "--listen", "127.0.0.1:0", "--device", "cpu", "--log-dir", str(log_dir),
         "--log-flush-interval", "50ms", "--drain-seconds", "5s",
         "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=write_end, text=True, cwd=ROOT,
    )  # fmt: skip
    os.close(write_end)
    assert proc.stdout is not None
    try:
        # Start-up writes a few lines to stderr; the pipe holds them until it is closed.
        for line in proc.stdout:
            if '"sidecar ready"' in line:
                break
        else:
            raise AssertionError(f"the sidecar exited with {proc.wait(10)} before it was ready")
    finally:
        os.close(read_end)  # from now on every write to stderr fails (EPIPE)
    return proc, json.loads(line)


def test_a_sidecar_that_cannot_write_stderr_refuses_with_error_info_and_stops_on_sigterm(
    model_dir: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    proc, ready = _serve_with_stderr_gone(model_dir / "mlp.onnx", log_dir)
    try:
        s = stub(int(ready["port"]))
        good = raw_request("mlp", {"input": ("FP32", np.ones((1, 32), np.float32))}, id="good")
        s.ModelInfer(good, timeout=30)
        for i in range(20):  # each refusal logs a line, which cannot be written
            bad = raw_request("mlp", {"input": ("INT64", np.ones((1, 32), np.int64))}, id=f"b{i}")
            with pytest.raises(grpc.RpcError) as err:
                s.ModelInfer(bad, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            info = error_info(err.value)
            assert info is not None and info.reason == "WRONG_DATATYPE"
        s.ModelInfer(good, timeout=30)  # still serving
        dropped = _sample(ready["metrics_port"], "modelplane_log_write_errors_total")
        assert dropped >= 20  # at least each refusal's line, counted where it can be seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # one SIGTERM: drained, closed, exit 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    files = list_log_files(log_dir)
    assert files and all(p.read_bytes().endswith(EOS) for p in files)  # closed, not cut
    ids = read_logs(log_dir).column("request_id").to_pylist()
    assert sorted(ids) == sorted(["good", "good", *(f"b{i}" for i in range(20))])


def _sample(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    return sum(x.value for f in families for x in f.samples if x.name == name)


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_log_lines_that_cannot_be_written_are_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    import structlog

    before = server_logging.write_errors()
    registry = CollectorRegistry()
    server_logging.export_write_errors(registry)
    exported = "modelplane_log_write_errors_total"
    assert registry.get_sample_value(exported) == before  # those before it was exported too
    monkeypatch.setattr(sys, "stderr", _FullDisk())
    try:
        server_logging.configure_logging("info")
        structlog.get_logger("test").info("a line nobody can read", n=1)
        logging.getLogger("test.stdlib").warning("a standard library line")
    finally:
        monkeypatch.undo()
        server_logging.configure_logging("warning")  # back to the real stderr, as conftest has it
    assert server_logging.write_errors() == before + 2
    assert registry.get_sample_value(exported) == before + 2
