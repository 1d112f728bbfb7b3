"""Leases on running operations, so that a replica that dies does not leave them hanging.

A replica holds each operation it runs under a lease (``lease_expire_time``) and renews it on a
timer. Any replica, at start and then on the same timer, marks failed with reason REPLICA_LOST
every unfinished operation whose lease expired: the work is not resumed elsewhere, the caller
starts it again under a new request id (a replay of the first one answers what it wrote: this
failure). The error is ABORTED, not UNAVAILABLE: retrying the same call cannot mend it, the
work has to be started again (AIP-193's "retry at a higher level"). A renewal that finds an
operation done (cancelled, or failed by another replica while this one stalled) or owned by
another replica renews nothing and reports it lost, so the work on it stops.

A worker that cannot record how its operation ended (the database unavailable or busy past its
wait limit) leaves that to the renewal timer (:meth:`Leases.end_later`): the operation stays
held, its lease renewed, until the end is recorded or the operation is found lost, rather than
being left to expire and end REPLICA_LOST while this replica is alive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from controlplane.domain.objects import Operation
from controlplane.failures import FailureStreak
from controlplane.services.operations import OperationLost, error_json
from controlplane.store import Store
from controlplane.store.convert import operation as operation_from_row
from controlplane.store.governance_repos import Governance
from controlplane.store.store import WriteTx
from controlplane.store.tables import OperationRow
from modelplane.errors import Aborted, ModelplaneError, Unavailable
from modelplane.server.context import RequestContext

log = structlog.get_logger("modelplane.leases")


def replica_lost(owner: str, what: str) -> Aborted:
    """The error of an operation whose replica ``what`` (stopped renewing its lease, was
    stopped) before it ended: its work is lost."""
    return Aborted(
        f"the replica running this operation ({owner or 'unknown'}) {what}, and its work is "
        "lost; start the work again with a new request id (this request id answers this "
        "failure again)",
        reason="REPLICA_LOST",
    )


class Leases:
    """The operations this replica holds, their renewal, and the failing of expired ones."""

    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        *,
        replica_id: str = "",
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.replica_id = replica_id
        self.on_lost = on_lost
        self._held: set[str] = set()
        #: How to record the end of held operations whose worker could not (see end_later).
        self._endings: dict[str, Callable[[], object]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def hold(self, op_id: str) -> None:
        with self._lock:
            self._held.add(op_id)

    def release(self, op_id: str) -> None:
        with self._lock:
            self._held.discard(op_id)
            self._endings.pop(op_id, None)

    def end_later(self, op_id: str, end: Callable[[], object]) -> None:
        """Keep holding ``op_id`` (its lease renewed) and call ``end``, which records how the
        operation ended, on each pass of the renewal timer until it succeeds or raises
        :class:`OperationLost`: for a worker whose own attempt found the database
        unavailable."""
        with self._lock:
            self._held.add(op_id)
            self._endings[op_id] = end

    def end_pending(self) -> None:
        """Record the ends :meth:`end_later` left, releasing the operations ended or found
        lost; one that fails again is kept for the next pass, and the first such error is
        raised once all were tried. An error other than UNAVAILABLE (not the database's
        absence, so trying again is no cure) is logged and the operation released, to lease
        expiry."""
        with self._lock:
            pending = list(self._endings.items())
        error: Unavailable | None = None
        for op_id, end in pending:
            try:
                end()
            except OperationLost:
                log.info("operation ended elsewhere before its end was recorded", operation=op_id)
            except Unavailable as exc:
                error = error or exc
                continue
            except Exception as exc:
                log.error("cannot record the end of an operation", operation=op_id, exc_info=exc)
            else:
                log.info("operation's end recorded once the database answered", operation=op_id)
            self.release(op_id)
        if error is not None:
            raise error

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def renew(self) -> None:
        """Extend the leases of the operations this replica holds; those now done or owned by
        another replica are released and passed to ``on_lost``."""
        running = self.held()
        if not running:
            return
        lost = []
        with self.store.write(RequestContext(principal="system"), "RenewLease") as tx:
            for op_id in running:
                row = tx.operations.locked(op_id)
                if row is None or row.done or (self.replica_id and row.owner != self.replica_id):
                    lost.append(op_id)
                    continue
                expiry = tx.now + timedelta(seconds=self.lease_seconds)
                tx.operations.update(row, {"lease_expire_time": expiry}, tx.now)
        for op_id in lost:
            self.release(op_id)
            if self.on_lost is not None:
                self.on_lost(op_id)

    def fail_expired(self) -> list[str]:
        """Mark failed (REPLICA_LOST) every unfinished operation whose lease expired; returns
        their names."""
        ctx = RequestContext(principal="system")
        failed = []
        with self.store.read() as tx:
            expired = Governance(tx.session).expired_operations(datetime.now(UTC))
        held = set(self.held())
        for op in expired:
            if op.id in held:
                continue
            err = replica_lost(op.owner, "stopped renewing its lease")
            with self.store.write(ctx, "FailOperation") as tx:
                # Locked and read afresh: a cancel or finish committing meanwhile is seen here
                # (and kept) instead of being overwritten from a stale copy.
                row = tx.operations.locked(op.id)
                if row is None or row.done:
                    continue
                current = operation_from_row(row)
                lease = current.lease_expire_time
                if lease is None or lease >= tx.now:
                    continue
                _end_failed(tx, row, current, err)
            failed.append(op.name)
            log.warning("operation failed: replica lost", operation=op.name, owner=op.owner)
        return failed

    def end_held(self, what: str) -> list[str]:
        """Mark failed (REPLICA_LOST, the replica ``what``) every operation this replica still
        holds, in one transaction, and release them; returns their names. For a replica that
        stops: its callers learn at once, rather than when the leases expire."""
        held = self.held()
        ended = []
        if held:
            with self.store.write(RequestContext(principal="system"), "FailOperation") as tx:
                for op_id in held:
                    row = tx.operations.locked(op_id)
                    if row is None or row.done or row.owner != self.replica_id:
                        continue
                    before = operation_from_row(row)
                    after = _end_failed(tx, row, before, replica_lost(self.replica_id, what))
                    ended.append(after.name)
        for op_id in held:
            self.release(op_id)
        if ended:
            log.warning("operations failed: replica stopped", operations=ended)
        return ended

    def watch(self, interval: float) -> None:
        """Fail expired operations now, then every ``interval`` seconds record pending ends,
        renew and fail again, on a daemon thread, until :meth:`stop`."""
        self.fail_expired()

        def loop() -> None:
            streak = FailureStreak()
            while not self._stopping.wait(interval):
                try:
                    self._upkeep()
                except Exception as exc:
                    if streak.failed():
                        # A database away is said in a line; anything else with its traceback.
                        trace = None if isinstance(exc, Unavailable) else exc
                        log.warning(
                            "lease upkeep failed; retrying",
                            error=str(exc),
                            failed_passes=streak.count,
                            exc_info=trace,
                        )
                    continue
                if failed := streak.succeeded():
                    log.info("lease upkeep works again", failed_passes=failed)

        threading.Thread(target=loop, name="leases", daemon=True).start()

    def _upkeep(self) -> None:
        """One pass of the timer: :meth:`end_pending`, :meth:`renew`, :meth:`fail_expired`,
        each tried even when one before it failed (the first failure is raised after)."""
        error: Exception | None = None
        for step in (self.end_pending, self.renew, self.fail_expired):
            try:
                step()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def stop(self) -> None:
        """End the renewal thread."""
        self._stopping.set()


def _end_failed(
    tx: WriteTx, row: OperationRow, before: Operation, err: ModelplaneError
) -> Operation:
    """Mark the locked operation ``row`` done with ``err``, owned by no one, and record it."""
    after = tx.operations.update(
        row,
        {"done": True, "owner": "", "lease_expire_time": None, "error": error_json(err)},
        tx.now,
    )
    tx.record("FailOperation", after.name, before, after)
    return after
