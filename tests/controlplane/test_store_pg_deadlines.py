"""PostgreSQL calls stuck behind a lock stop waiting at their call's deadline: they give their
thread and pooled connection back, so that calls on other tables are still served, and a
write whose caller was told it failed is not applied once the lock is released."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from controlplane.store import Store
from modelplane import Client, ModelplaneError, NotFound, Unavailable
from modelplane.server import RequestContext
from modelplane.server.context import reset_context, set_context
from tests.conftest import private_database
from tests.controlplane.conftest import RunningControlPlane, start_controlplane

pytestmark = pytest.mark.postgres

#: More stuck calls than the server has threads (16) and pooled connections (30).
STUCK_CALLS = 40
CALL_TIMEOUT_S = 2.0


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """A database of this test's own (``pg_url`` skips when there is no server): a table
    lock here stops no other test."""
    with private_database(f"modelplane_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
def server(tmp_path: Path, pg_db: str) -> Iterator[RunningControlPlane]:
    cp = start_controlplane(tmp_path, pg_db)
    yield cp
    cp.handle.stop(0)


class _Calls(threading.Thread):
    """One short-deadline call on a thread of its own, keeping the error it got."""

    def __init__(self, address: str, index: int) -> None:
        super().__init__(daemon=True)
        self.address, self.index = address, index
        self.error: ModelplaneError | None = None

    def run(self) -> None:
        with Client(self.address, principal="alice", retries=1, timeout=CALL_TIMEOUT_S) as client:
            try:
                if self.index % 3 == 0:
                    client.get_model("kept")
                elif self.index % 3 == 1:
                    list(client.list_models())
                else:
                    client.create_model(f"late-{self.index}")
            except ModelplaneError as exc:
                self.error = exc


def test_calls_stuck_on_a_locked_table_give_way_at_their_deadline(
    server: RunningControlPlane, pg_db: str
) -> None:
    with server.client() as c:
        c.create_model("kept")
    with psycopg.connect(pg_db) as locker:
        locker.execute("LOCK TABLE models IN ACCESS EXCLUSIVE MODE")
        calls = [_Calls(server.address, i) for i in range(STUCK_CALLS)]
        for call in calls:
            call.start()
        for call in calls:
            call.join(30)
        assert all(call.error is not None for call in calls), "a call got past the lock"
        # The lock is still held: a call that does not touch the table is served at once,
        # with threads and connections free again.
        time.sleep(0.5)
        with Client(server.address, principal="alice", retries=1, timeout=5) as c:
            started = time.monotonic()
            with pytest.raises(NotFound):
                c.get_deployment("unrelated")
            assert time.monotonic() - started < 2.5
        locker.rollback()
    # The writes whose callers gave up are never applied, even once the lock is free.
    time.sleep(2.0)
    with server.client() as c:
        names = {m.name for m in c.list_models()}
        assert names == {"models/kept"}
        c.create_model("after")


def test_a_read_with_little_time_left_is_limited_to_it(pg_db: str) -> None:
    """In process: a read on a locked table ends (UNAVAILABLE) when its call's time is up,
    long before the 30 s lock wait limit, and its connection is usable again."""
    store = Store.open(pg_db)
    try:
        with psycopg.connect(pg_db) as locker:
            locker.execute("LOCK TABLE models IN ACCESS EXCLUSIVE MODE")
            token = set_context(RequestContext(deadline=time.monotonic() + 1.0))
            try:
                started = time.monotonic()
                with pytest.raises(Unavailable) as waited, store.read() as tx:
                    tx.models.get("anything")
                assert waited.value.reason == "DATABASE_UNAVAILABLE"
                assert time.monotonic() - started < 2.0
            finally:
                reset_context(token)
            locker.rollback()
        # Outside the call, the same pooled connection has no limit left over.
        with store.read() as tx:
            assert tx.session.connection().exec_driver_sql("SHOW lock_timeout").scalar() == "30s"
            assert tx.session.connection().exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        store.close()
