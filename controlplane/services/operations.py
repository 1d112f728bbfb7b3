"""Long-running operation records: create, progress, finish, cancel, read, wait.

Progress and finishing are conditional: they apply only while the operation is not done and
this replica owns it. An operation cancelled by a caller, or failed (REPLICA_LOST) by another
replica after this one's lease lapsed, raises :class:`OperationLost` to the worker instead, and
the worker abandons its work.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from controlplane.auth.policy import OperationScope, listed_models
from controlplane.domain import Operation
from controlplane.names import check_text, parse_operation
from controlplane.store import Store, Tx, WriteTx
from controlplane.store.convert import operation as operation_from_row
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.tables import OperationRow
from modelplane.errors import Cancelled, ModelplaneError, NotFound
from modelplane.server.context import RequestContext, current_context

MAX_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.2


class OperationLost(Exception):
    """The operation is no longer this replica's to update: it is done (cancelled, or failed
    by another replica) or another replica owns it."""

    def __init__(self, op_id: str) -> None:
        super().__init__(f"operation {op_id} is done or held by another replica")
        self.op_id = op_id


class OperationService:
    """Persisted operations that any replica can report on, resume or fail."""

    def __init__(self, store: Store, replica_id: str = "") -> None:
        self.store = store
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def on_cancel(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(op_id)`` after an operation is cancelled through this service, so
        that work running in this process stops at once (other replicas notice on their next
        lease renewal or progress report)."""
        with self._lock:
            self._cancel_listeners.append(listener)

    def held(self, tx: Tx, op_id: str) -> OperationRow | None:
        """The operation's row, locked until ``tx`` ends, while this replica holds it (not done
        and owned by this replica); None otherwise."""
        row = tx.operations.locked(op_id)
        if row is None or row.done or row.owner != self.replica_id:
            return None
        return row

    def start(
        self,
        ctx: RequestContext,
        kind: str,
        target: str,
        metadata: dict[str, Any] | None = None,
        lease_seconds: float = 60.0,
    ) -> Operation:
        """Record a new operation held by this replica."""
        op_id = f"op-{uuid.uuid4().hex}"
        with self.store.write(ctx, "StartOperation") as tx:
            op = tx.operations.add(
                OperationRow(
                    id=op_id,
                    kind=kind,
                    target=target,
                    op_metadata=metadata or {},
                    created_by=ctx.principal,
                    create_time=tx.now,
                    update_time=tx.now,
                    owner=self.replica_id,
                    lease_expire_time=tx.now + timedelta(seconds=lease_seconds),
                )
            )
            tx.record("StartOperation", op.name, None, op)
            return op

    def progress(
        self, ctx: RequestContext, op_id: str, fraction: float, message: str = ""
    ) -> Operation:
        """Record progress; :class:`OperationLost` when this replica no longer holds it."""
        with self.store.write(ctx, "UpdateOperation") as tx:
            row = self.held(tx, op_id)
            if row is None:
                raise OperationLost(op_id)
            op = tx.operations.update(
                row,
                {"progress": max(0.0, min(1.0, fraction)), "progress_message": message},
                tx.now,
            )
            tx.record("UpdateOperation", op.name, None, op)
            return op

    def finish(
        self,
        ctx: RequestContext,
        op_id: str,
        *,
        result_type: str = "",
        result: bytes = b"",
        error: ModelplaneError | None = None,
    ) -> Operation:
        """Mark the operation done with a result or an error; :class:`OperationLost` when this
        replica no longer holds it."""
        with self.store.write(ctx, "FinishOperation") as tx:
            return self.finish_in(tx, op_id, result_type=result_type, result=result, error=error)

    def finish_in(
        self,
        tx: WriteTx,
        op_id: str,
        *,
        result_type: str = "",
        result: bytes = b"",
        error: ModelplaneError | None = None,
    ) -> Operation:
        """:meth:`finish` inside the write transaction ``tx``, so that what the result stands
        for is stored together with it, or not at all."""
        row = self.held(tx, op_id)
        if row is None:
            raise OperationLost(op_id)
        changes: dict[str, Any] = {"done": True, "owner": "", "lease_expire_time": None}
        if error is not None:
            changes["error"] = error_json(error)
        else:
            changes.update(progress=1.0, result_type=result_type, result=result)
        op = tx.operations.update(row, changes, tx.now)
        tx.record("FinishOperation", op.name, None, op)
        return op

    def cancel(self, ctx: RequestContext, name: str) -> Operation:
        """Cancel an operation (best effort): an unfinished one ends at once, done with error
        CANCELLED, and its work stops; one already done is returned as it is (cancelling it
        changes nothing)."""
        op_id = parse_operation(name)
        with self.store.write(ctx, "CancelOperation") as tx:
            row = tx.operations.locked(op_id)
            if row is None:
                raise _missing(name, op_id)
            before = operation_from_row(row)
            if before.done:
                return before
            err = Cancelled(f"cancelled by {ctx.principal or 'a caller'}", reason="CANCELLED")
            after = tx.operations.update(
                row,
                {"done": True, "owner": "", "lease_expire_time": None, "error": error_json(err)},
                tx.now,
            )
            tx.record("CancelOperation", after.name, before, after)
        with self._lock:
            listeners = list(self._cancel_listeners)
        for listener in listeners:
            listener(op_id)
        return after

    def get(self, name: str) -> Operation:
        """Operation ``name``; a missing one is NOT_FOUND, or for a caller whose roles hold
        only on some models the refusal an operation of another model gets (:func:`_missing`)."""
        op_id = parse_operation(name)
        with self.store.read() as tx:
            op = tx.operations.get(op_id)
        if op is None:
            raise _missing(name, op_id)
        return op

    def list_operations(
        self,
        target: str = "",
        page_size_: int = 0,
        page_token: str = "",
        ctx: RequestContext | None = None,
    ) -> tuple[list[Operation], str]:
        """A page of operations, newest first, and the next page's token ("" at the end). A
        caller (``ctx``, by default the current call's) whose roles hold only on some models is
        shown the operations on those models alone, selected in the query."""
        visible = listed_models(ctx or current_context())
        # Targets are resource names; a filter no stored target can equal (one PostgreSQL
        # text cannot hold, say) is refused rather than sent to the database.
        check_text(target, "target", 1_000, single_line=True)
        query = {"list": "operations", "target": target}
        after = decode(page_token, query)
        with self.store.read() as tx:
            ops, next_key = tx.operations.page(target, after, page_size(page_size_), visible)
        return ops, encode(query, next_key) if next_key else ""

    def wait(self, name: str, timeout: float) -> Operation:
        """Poll until done or ``timeout`` (capped) passes, or until :meth:`stop_waits`."""
        deadline = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT_SECONDS)
        while True:
            # Read after the stop is seen: what the stopping replica ended is answered ended.
            stopping = self._stopping.is_set()
            op = self.get(name)
            if op.done or stopping or time.monotonic() >= deadline:
                return op
            self._stopping.wait(POLL_SECONDS)

    def stop_waits(self) -> None:
        """Answer every wait, now and from now on, with the operation as it stands: for a
        server that stops (once it ended the operations it held), so that waits neither hold
        its stop for the grace period nor are cut off at its end without an answer."""
        self._stopping.set()


def _missing(name: str, op_id: str) -> ModelplaneError:
    """What a call about operation ``name`` that does not exist answers: NOT_FOUND, but for a
    caller whose roles hold only on some models (the current call's resource check is an
    :class:`OperationScope`) the refusal an operation of another model gets, so that it cannot
    tell which operations exist."""
    check = current_context().resource_check
    if isinstance(check, OperationScope):
        return check.refusal(f"operations/{op_id}")
    return NotFound(f"operation {name} does not exist", reason="OPERATION_NOT_FOUND")


def error_json(error: ModelplaneError) -> dict[str, str]:
    """How an operation's error is stored."""
    return {"code": error.code.value, "reason": error.reason, "message": error.message}
