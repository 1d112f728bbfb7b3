"""Long-running operation records: create, progress, finish, read, wait."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from controlplane.domain import Operation
from controlplane.names import parse_operation
from controlplane.store import Store
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.tables import OperationRow
from modelplane.errors import ModelplaneError, NotFound
from modelplane.server.context import RequestContext

MAX_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.2


class OperationService:
    """Persisted operations that any replica can report on, resume or fail."""

    def __init__(self, store: Store, replica_id: str = "") -> None:
        self.store = store
        self.replica_id = replica_id or uuid.uuid4().hex[:12]

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
        with self.store.write(ctx, "UpdateOperation") as tx:
            op = tx.operations.update(
                op_id,
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
        """Mark the operation done with a result or an error."""
        changes: dict[str, Any] = {"done": True, "owner": "", "lease_expire_time": None}
        if error is not None:
            changes["error"] = {
                "code": error.code.value,
                "reason": error.reason,
                "message": error.message,
            }
        else:
            changes.update(progress=1.0, result_type=result_type, result=result)
        with self.store.write(ctx, "FinishOperation") as tx:
            op = tx.operations.update(op_id, changes, tx.now)
            tx.record("FinishOperation", op.name, None, op)
            return op

    def get(self, name: str) -> Operation:
        op_id = parse_operation(name)
        with self.store.read() as tx:
            op = tx.operations.get(op_id)
        if op is None:
            raise NotFound(f"operation {name} does not exist", reason="OPERATION_NOT_FOUND")
        return op

    def list_operations(
        self, target: str = "", page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[Operation], str]:
        query = {"target": target}
        after = decode(page_token, query)
        with self.store.read() as tx:
            ops, next_key = tx.operations.page(target, after, page_size(page_size_))
        return ops, encode(query, next_key) if next_key else ""

    def wait(self, name: str, timeout: float) -> Operation:
        """Poll until done or ``timeout`` (capped) passes."""
        deadline = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT_SECONDS)
        while True:
            op = self.get(name)
            if op.done or time.monotonic() >= deadline:
                return op
            time.sleep(POLL_SECONDS)
