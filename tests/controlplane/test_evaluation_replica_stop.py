"""A control plane stopped gracefully (SIGTERM) ends the operations of the evaluations it holds,
running or waiting for a worker, as it stops: their callers learn at once that the work is
lost, rather than when the leases expire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane import Client
from modelplane.testing import wait_serving
from modelplane.testing.processes import free_port
from tests.controlplane.test_evaluation_control import dataset, register, wait_running


def test_sigterm_ends_the_evaluations_of_the_replica_at_once(tmp_path: Path, db_url: str) -> None:
    data = dataset(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    # A lease far longer than the test: its expiry cannot be what ends the operations.
    env.update(
        MODELPLANE_OPERATION_LEASE_SECONDS="600",
        MODELPLANE_EVALUATION_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "cp.log"
    with log.open("wb") as out:
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
                db_url,
                "--artifact-root",
                str(tmp_path / "art"),
            ],
            stdout=out,
            stderr=out,
            env=env,
        )
    try:
        wait_serving(address, timeout=60, proc=proc)
        with Client(address, principal="alice", timeout=30) as c:
            model_id, version = register(c, tmp_path, 10**12)
            running = c.evaluate(model_id, version, data, label="target", compare_to="-")
            wait_running(c, running.name)
            queued = c.evaluate(model_id, version, data, label="target", compare_to="-")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = Store.open(db_url)
    try:
        ops = OperationService(store, replica_id="reader")
        ended = [ops.get(running.name), ops.get(queued.name)]
    finally:
        store.close()
    assert took < 10
    # In one transaction: both changed at the same commit time.
    assert ended[0].update_time == ended[1].update_time
    for op in ended:
        assert op.done and op.owner == "" and op.error is not None, op
        assert (op.error.code, op.error.reason) == ("ABORTED", "REPLICA_LOST")
        assert "was stopped" in op.error.message
        assert "start the work again with a new request id" in op.error.message
