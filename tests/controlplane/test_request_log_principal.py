"""Every request log line names a principal: a call refused before its caller is known (an
unknown bearer token) is logged as ``anonymous``, never with the token it sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import Unauthenticated
from modelplane.testing import processes

TOKEN = "mp-ada-0123456789abcdef"
BAD_TOKEN = "mp-not-a-known-token-at-all"


def test_refused_calls_are_logged_with_a_principal(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n- {{token: {TOKEN}, principal: ada, roles: [admin]}}\n")
    server = processes.controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", extra=("--auth", f"tokens:{tokens}")
    ).start()
    try:
        with (
            Client(server.address, token=BAD_TOKEN, timeout=30) as c,
            pytest.raises(Unauthenticated),
        ):
            c.get_model("x")
        with Client(server.address, token=TOKEN, timeout=30) as c:
            list(c.list_models())
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    log = server.log.read_text()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    rpc = {x["method"]: x for x in lines if x.get("event") == "rpc"}
    assert rpc["GetModel"]["code"] == "UNAUTHENTICATED"
    assert rpc["GetModel"]["principal"] == "anonymous"
    assert rpc["ListModels"]["code"] == "OK" and rpc["ListModels"]["principal"] == "ada"
    assert BAD_TOKEN not in log and TOKEN not in log


def test_each_worker_logs_its_own_process_id(tmp_path: Path) -> None:
    """With --workers 2, every line names the process that wrote it, so a request's line tells
    which worker served it."""
    server = processes.controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", extra=("--workers", "2")
    ).start()
    try:
        for _ in range(8):  # new connections, which the kernel spreads over the workers
            with Client(server.address, timeout=30) as c:
                list(c.list_models())
    finally:
        server.stop()
    assert server.proc is not None
    lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.startswith("{")]
    assert lines and all(isinstance(x.get("pid"), int) for x in lines), lines[:3]
    served = {x["pid"] for x in lines if x.get("event") == "rpc" and x["method"] == "ListModels"}
    assert served and server.proc.pid not in served
    assert {x["pid"] for x in lines} > served  # the supervisor's lines name its own


def test_a_worker_that_dies_is_named_by_its_pid_in_the_supervisors_line(tmp_path: Path) -> None:
    import os
    import signal

    server = processes.controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", extra=("--workers", "2")
    ).start()
    try:
        with Client(server.address, timeout=30) as c:
            list(c.list_models())
        lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.startswith("{")]
        [worker] = {x["pid"] for x in lines if x.get("event") == "rpc"}
        os.kill(worker, signal.SIGKILL)
        assert server.proc is not None
        assert server.proc.wait(60) == 1  # one worker exiting stops them all
    finally:
        server.stop()
    lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.startswith("{")]
    [exited] = [x for x in lines if x.get("event") == "worker exited"]
    assert exited["worker_pid"] == worker and exited["pid"] == server.proc.pid
