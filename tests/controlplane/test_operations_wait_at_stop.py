"""A control plane stopped gracefully (SIGTERM) while callers wait on an evaluation it runs:
the evaluation ends ABORTED (REPLICA_LOST) before the grace period, the waits (the SDK's and
``modelplane operations wait``) are answered with that ended operation at once, and the process
exits without waiting out its grace period for them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from modelplane import Client
from modelplane.testing.launch import prefix
from modelplane.testing.processes import controlplane
from modelplane.v1 import operations_pb2, operations_pb2_grpc
from tests.controlplane.test_evaluation_control import dataset, register, wait_running

GRACE_SECONDS = 30
WAITERS = 2


class Waiter(threading.Thread):
    """Waits on an operation through the SDK (up to 50 s), keeping the answer (or error) and
    when it came."""

    def __init__(self, address: str, name: str) -> None:
        super().__init__(daemon=True)
        self.address, self.name = address, name
        self.answer: Any = None
        self.at = 0.0

    def run(self) -> None:
        try:
            with Client(self.address, principal="alice", timeout=60) as c:
                self.answer = c.wait_operation(self.name, timeout=50)
        except Exception as exc:  # kept for the test to look at
            self.answer = exc
        self.at = time.monotonic()


def _all_wait_slots_taken(address: str, name: str) -> bool:
    """Whether the server's WAITERS wait slots are all held: a wait past them is answered at
    once (AIP-151) rather than after its 5 s."""
    with grpc.insecure_channel(address) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        request = operations_pb2.WaitOperationRequest(name=name)
        request.timeout.FromTimedelta(timedelta(seconds=5))
        started = time.monotonic()
        stub.WaitOperation(request, timeout=10, metadata=[("x-modelplane-principal", "alice")])
        return time.monotonic() - started < 2.5


def test_waits_get_the_ended_operation_and_do_not_hold_the_stop(tmp_path: Path) -> None:
    data = dataset(tmp_path)
    server = controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        extra=("--evaluation-workers", "1"),
        env={
            "MODELPLANE_OPERATION_LEASE_SECONDS": "600",  # lease expiry ends nothing here
            "MODELPLANE_GRACE_SECONDS": str(GRACE_SECONDS),
            "MODELPLANE_MAX_WAITS": str(WAITERS),
        },
    ).start(timeout=60)
    assert server.proc is not None
    cli = None
    try:
        with Client(server.address, principal="alice", timeout=30) as c:
            model_id, version = register(c, tmp_path, 10**12)  # runs until stopped
            op = c.evaluate(model_id, version, data, label="target", compare_to="-")
            wait_running(c, op.name)
        sdk = Waiter(server.address, op.name)
        sdk.start()
        cli = subprocess.Popen(
            [
                *prefix(),
                sys.executable,
                "-m",
                "modelplane.cli",
                "--server",
                server.address,
                "--as",
                "alice",
                "--output",
                "json",
                "operations",
                "wait",
                op.name,
                "--timeout",
                "50",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Both are waiting on the server before it is told to stop.
        for _ in range(120):
            if _all_wait_slots_taken(server.address, op.name):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the waits did not reach the server")
        assert sdk.is_alive() and cli.poll() is None

        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(GRACE_SECONDS + 30) == 0, server.tail()
        exited_at = time.monotonic()
        sdk.join(30)
        _, cli_err = cli.communicate(timeout=30)
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()
        server.kill()

    # The waits were answered before the process exited, and it exited before its grace ended.
    assert stopped_at < sdk.at <= exited_at, (stopped_at, sdk.at, exited_at)
    assert exited_at - stopped_at < GRACE_SECONDS, server.tail()
    # Their answer is the ended operation, not a connection error.
    ended = sdk.answer
    assert isinstance(ended, operations_pb2.Operation), ended
    assert ended.name == op.name and ended.done
    assert (ended.error.code, ended.error.reason) == ("ABORTED", "REPLICA_LOST")
    assert "was stopped" in ended.error.message
    assert cli.returncode == 3, cli_err
    assert "ABORTED" in cli_err and "REPLICA_LOST" in cli_err
    events = [x.get("event", "") for x in server.json_lines()]
    assert "operations failed: replica stopped" in events
