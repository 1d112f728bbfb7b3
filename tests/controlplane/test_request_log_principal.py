"""Every request log line names a principal: a call refused before its caller is known (an
unknown bearer token) is logged as ``anonymous``, never with the token it sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import Unauthenticated
from modelplane.testing import wait_serving
from modelplane.testing.processes import free_port

TOKEN = "mp-ada-0123456789abcdef"
BAD_TOKEN = "mp-not-a-known-token-at-all"


def test_refused_calls_are_logged_with_a_principal(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n- {{token: {TOKEN}, principal: ada, roles: [admin]}}\n")
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "controlplane",
            "serve",
            "--listen",
            address,
            "--db",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "art"),
            "--auth",
            f"tokens:{tokens}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_serving(address, timeout=60, proc=proc)
        with Client(address, token=BAD_TOKEN, timeout=30) as c, pytest.raises(Unauthenticated):
            c.get_model("x")
        with Client(address, token=TOKEN, timeout=30) as c:
            list(c.list_models())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(x) for x in err.splitlines() if x.strip()]
    rpc = {x["method"]: x for x in lines if x.get("event") == "rpc"}
    assert rpc["GetModel"]["code"] == "UNAUTHENTICATED"
    assert rpc["GetModel"]["principal"] == "anonymous"
    assert rpc["ListModels"]["code"] == "OK" and rpc["ListModels"]["principal"] == "ada"
    assert BAD_TOKEN not in err and TOKEN not in err
