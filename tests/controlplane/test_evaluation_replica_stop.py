"""A control plane stopped gracefully (SIGTERM) ends the operations of the evaluations it holds,
running or waiting for a worker, as it stops: their callers learn at once that the work is
lost, rather than when the leases expire."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane import Client
from modelplane.testing.processes import controlplane
from tests.controlplane.test_evaluation_control import dataset, register, wait_running


def test_sigterm_ends_the_evaluations_of_the_replica_at_once(tmp_path: Path, db_url: str) -> None:
    data = dataset(tmp_path)
    # A lease far longer than the test: its expiry cannot be what ends the operations.
    server = controlplane(
        tmp_path,
        db_url,
        extra=("--evaluation-workers", "1"),
        env={"MODELPLANE_OPERATION_LEASE_SECONDS": "600"},
    ).start(timeout=60)
    assert server.proc is not None
    try:
        with Client(server.address, principal="alice", timeout=30) as c:
            model_id, version = register(c, tmp_path, 10**12)
            running = c.evaluate(model_id, version, data, label="target", compare_to="-")
            wait_running(c, running.name)
            queued = c.evaluate(model_id, version, data, label="target", compare_to="-")
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.tail()
        took = time.monotonic() - stopped_at
    finally:
        server.kill()
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
