"""An evaluation whose replica was lost ends ABORTED (REPLICA_LOST), an error that says to start
the work again under a new request id: retrying the same call, or replaying its request id,
answers the same failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane.errors import Aborted
from modelplane.server.context import RequestContext
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_evaluation_control import dataset, register, wait_done, wait_running


def test_a_lost_evaluation_is_started_again_under_a_new_request_id(
    tmp_path: Path, db_url: str
) -> None:
    data = dataset(tmp_path)
    lost_replica = start_controlplane(
        tmp_path, db_url, evaluation_workers=1, operation_lease_seconds=1.0
    )
    with lost_replica.client() as c:
        model_id, version = register(c, tmp_path, 10**12)
        first = c.evaluate(
            model_id, version, data, label="target", compare_to="-", request_id="pipeline-7-eval"
        )
        wait_running(c, first.name)
    lost_replica.handle.stop(0)
    survivor = start_controlplane(
        tmp_path, db_url, evaluation_workers=1, operation_lease_seconds=1.0
    )
    try:
        with survivor.client() as c:
            lost = wait_done(c, first.name)
            with pytest.raises(Aborted) as err:
                c.operation_result(lost)
            replay = c.evaluate(
                model_id,
                version,
                data,
                label="target",
                compare_to="-",
                request_id="pipeline-7-eval",
            )
            fresh = c.evaluate(
                model_id,
                version,
                data,
                label="target",
                compare_to="-",
                request_id="pipeline-7-eval-2",
            )
            wait_running(c, fresh.name)
            c.cancel_operation(fresh.name)
    finally:
        survivor.handle.stop(0)
    assert (lost.error.code, lost.error.reason) == ("ABORTED", "REPLICA_LOST")
    assert "start the work again with a new request id" in lost.error.message
    assert err.value.reason == "REPLICA_LOST"
    # The request id's answer is what its first run wrote: the lost operation.
    assert replay.name == first.name and replay.done and replay.error == lost.error
    assert fresh.name != first.name


def test_an_operation_whose_lease_expired_ends_aborted(tmp_path: Path, db_url: str) -> None:
    store = Store.open(db_url)
    try:
        dead = OperationService(store, replica_id="dead-replica")
        op = dead.start(
            RequestContext(principal="alice"), "evaluation", "models/m/versions/1", lease_seconds=-1
        )
    finally:
        store.close()
    cp = start_controlplane(tmp_path, db_url, operation_lease_seconds=60)
    try:
        with cp.client() as c:
            lost = c.get_operation(op.name)
    finally:
        cp.handle.stop(0)
    assert (lost.error.code, lost.error.reason) == ("ABORTED", "REPLICA_LOST")
    assert "dead-replica" in lost.error.message
    assert "stopped renewing its lease" in lost.error.message
    assert "start the work again with a new request id" in lost.error.message
