"""Operations held under a lease: once done (failed by another replica after a lapsed lease,
or cancelled) the replica that ran them can neither report progress on them nor finish them."""

from __future__ import annotations

import threading
import time

import pytest

from controlplane.services.leases import Leases
from controlplane.services.operations import OperationLost, OperationService
from controlplane.store import Mutation, Store
from modelplane.server.context import RequestContext


def test_an_operation_failed_by_another_replica_cannot_be_finished(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        ctx = RequestContext(principal="alice")
        mine = OperationService(store, replica_id="replica-a")
        op = mine.start(ctx, "evaluation", "models/m/versions/1", lease_seconds=-1)
        assert Leases(store, 60).fail_expired() == [op.name]
        with pytest.raises(OperationLost):
            mine.progress(ctx, op.id, 0.5, "evaluating")
        with pytest.raises(OperationLost):
            mine.finish(ctx, op.id, result_type="type.googleapis.com/x", result=b"x")
        after = mine.get(op.name)
        # Another replica's operation is not this one's to finish either.
        theirs = OperationService(store, replica_id="replica-b").start(
            ctx, "evaluation", "models/m/versions/1"
        )
        with pytest.raises(OperationLost):
            mine.finish(ctx, theirs.id, result_type="type.googleapis.com/x", result=b"x")
    finally:
        store.close()
    assert after.done and after.error is not None and after.error.reason == "REPLICA_LOST"
    assert after.result == b"" and after.result_type == "" and after.progress == 0.0


def test_cancel_ends_an_operation_once(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        ctx = RequestContext(principal="alice")
        ops = OperationService(store, replica_id="replica-a")
        seen: list[str] = []
        ops.on_cancel(seen.append)
        op = ops.start(ctx, "evaluation", "models/m/versions/1")
        cancelled = ops.cancel(RequestContext(principal="bob"), op.name)
        with pytest.raises(OperationLost):
            ops.finish(ctx, op.id, result_type="type.googleapis.com/x", result=b"x")
        again = ops.cancel(ctx, op.name)
        done = ops.start(ctx, "evaluation", "models/m/versions/1")
        ops.finish(ctx, done.id, result_type="type.googleapis.com/x", result=b"x")
        untouched = ops.cancel(ctx, done.name)
    finally:
        store.close()
    assert cancelled.done and cancelled.error is not None
    assert (cancelled.error.code, cancelled.error.reason) == ("CANCELLED", "CANCELLED")
    assert "bob" in cancelled.error.message and cancelled.owner == ""
    assert again == cancelled and seen == [op.id]
    assert untouched.error is None and untouched.result == b"x"


def test_a_cancel_committing_while_expired_leases_are_failed_is_kept(pg_url: str) -> None:
    """A cancel holds the operation's row; failing its expired lease meanwhile waits for it
    and then finds it done, rather than overwriting CANCELLED with REPLICA_LOST."""
    import psycopg

    cancelling, other = Store.open(pg_url), Store.open(pg_url)
    locked, go = threading.Event(), threading.Event()

    def pause(session: object, mutations: list[Mutation]) -> None:
        if any(m.action == "CancelOperation" for m in mutations):
            locked.set()  # the row is updated and locked until this transaction commits
            assert go.wait(30)

    cancelling.hooks.append(pause)
    failed: list[list[str]] = []
    try:
        ctx = RequestContext(principal="alice")
        ops = OperationService(cancelling, replica_id="replica-a")
        op = ops.start(ctx, "evaluation", "models/m/versions/1", lease_seconds=-1)
        cancel = threading.Thread(
            target=ops.cancel, args=(RequestContext(principal="bob"), op.name)
        )
        cancel.start()
        assert locked.wait(30)
        sweep = threading.Thread(
            target=lambda: failed.append(Leases(other, 60, replica_id="replica-b").fail_expired())
        )
        sweep.start()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for _ in range(600):  # until the sweep waits for the cancel's row lock
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the sweep never waited for the cancel")
        go.set()
        cancel.join(30)
        sweep.join(30)
        after = ops.get(op.name)
    finally:
        go.set()
        cancelling.close()
        other.close()
    assert failed == [[]]
    assert after.error is not None and after.error.reason == "CANCELLED"
