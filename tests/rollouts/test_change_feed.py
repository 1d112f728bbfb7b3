"""The PostgreSQL change feed: notifications reach the hub, and after its listening connection
is lost every watcher is woken once it listens again (changes committed meanwhile were not
heard), whatever deployment it watches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from controlplane.rollouts.notifier import CHANNEL, GenerationHub, postgres_feed

pytestmark = pytest.mark.timeout(60)


def test_changed_all_wakes_watchers_of_every_deployment() -> None:
    hub = GenerationHub()
    hub.changed("a")
    tokens = {d: hub.token(d) for d in ("a", "never-seen")}
    woken: dict[str, bool] = {}

    def watch(d: str) -> None:
        woken[d] = hub.wait(d, tokens[d], 10)

    threads = [threading.Thread(target=watch, args=(d,)) for d in tokens]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert woken == {}
    hub.changed_all()
    for t in threads:
        t.join(5)
    assert woken == {"a": True, "never-seen": True}
    # Tokens taken after it do not see it again.
    assert not hub.wait("a", hub.token("a"), 0.05)


def _wait_for(predicate: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_listener_wakes_every_watcher_after_it_reconnects(
    own_database: tuple[str, str],
) -> None:
    """On a database of its own, whose sessions alone are counted (pg_stat_activity lists
    the whole server's): no other process listens there."""
    import psycopg

    _, url = own_database
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    hub = GenerationHub()
    feed = postgres_feed(url, hub).start()

    def listening_pids() -> list[int]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                (f"LISTEN {CHANNEL}%",),
            ).fetchall()
        return [r[0] for r in rows]

    try:
        assert _wait_for(lambda: bool(listening_pids()))
        # A notification reaches the hub.
        token = hub.token("fraud")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "fraud"))
        assert hub.wait("fraud", token, 10)
        # The listening connection is cut: once listening again, a watcher of a deployment
        # no notification named is woken.
        tokens = hub.token("other")
        [pid] = listening_pids()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert hub.wait("other", tokens, 20)
        assert _wait_for(lambda: listening_pids() not in ([], [pid]))
    finally:
        feed.close()
