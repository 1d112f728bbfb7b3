"""Telling watchers in this process that a deployment's desired state changed.

:class:`GenerationHub` fans a "deployment X changed" signal out to the watch streams of this
process. Changes made by this process signal it directly after commit. Changes made by other
replicas arrive through a :class:`Feed`:

- PostgreSQL: every change runs ``pg_notify`` in its transaction (delivered at commit), and
  one listener connection per process (``LISTEN``) relays them to the hub;
- SQLite (one host): a poller reads every deployment's generation every ``interval`` seconds
  (one small query).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from sqlalchemy import text
from sqlmodel import Session

from controlplane.failures import FailureStreak

log = structlog.get_logger("modelplane.controlplane.rollouts")

CHANNEL = "modelplane_deployments"


class GenerationHub:
    """Per-deployment change counters that watchers wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._changes: dict[str, int] = {}
        self._all = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def token(self, deployment_id: str) -> int:
        """The change count of a deployment; pass it to :meth:`wait`."""
        with self._cond:
            return self._count(deployment_id)

    def _count(self, deployment_id: str) -> int:
        # Both terms only grow, so their sum moves whenever either does.
        return self._changes.get(deployment_id, 0) + self._all

    def changed(self, deployment_id: str) -> None:
        """Wake everyone watching ``deployment_id``."""
        with self._cond:
            self._changes[deployment_id] = self._changes.get(deployment_id, 0) + 1
            self._cond.notify_all()

    def changed_all(self) -> None:
        """Wake every watcher, whatever it watches (changes may have been missed)."""
        with self._cond:
            self._all += 1
            self._cond.notify_all()

    def wait(self, deployment_id: str, token: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a change after ``token``; True when one came."""
        with self._cond:
            changed = self._cond.wait_for(
                lambda: self._closed or self._count(deployment_id) != token, timeout
            )
            return changed and not self._closed

    def close(self) -> None:
        """Wake every watcher for good (the server is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def publish(session: Session, deployment_id: str) -> None:
    """Inside a write transaction: tell other replicas at commit (PostgreSQL only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": deployment_id})


class Feed:
    """A background thread relaying other replicas' changes to a hub; :meth:`close` stops it."""

    def __init__(self, target: Callable[[threading.Event], None], name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def postgres_feed(url: str, hub: GenerationHub) -> Feed:
    """LISTEN on one connection and relay each notification (reconnecting after errors)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)

    def run(stop: threading.Event) -> None:
        streak = FailureStreak()
        listened = False
        while not stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if listened:
                        # Changes committed while no connection listened were not heard:
                        # every watcher reads its deployment again.
                        hub.changed_all()
                    listened = True
                    if failed := streak.succeeded():
                        log.info("deployment change listener reconnected", failed_tries=failed)
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.25):
                            hub.changed(note.payload)
            except Exception as exc:
                if streak.failed():
                    log.warning(
                        "deployment change listener failed; reconnecting",
                        error=str(exc),
                        failed_tries=streak.count,
                    )
                stop.wait(1.0)

    return Feed(run, "deployment-listener")


def polling_feed(
    read_generations: Callable[[], dict[str, int]], hub: GenerationHub, interval: float
) -> Feed:
    """Poll every deployment's generation; signal the ones that moved."""

    def run(stop: threading.Event) -> None:
        seen: dict[str, int] | None = None
        streak = FailureStreak()
        while not stop.wait(interval):
            try:
                now = read_generations()
            except Exception as exc:
                if streak.failed():
                    log.warning(
                        "polling deployment generations failed",
                        error=str(exc),
                        failed_polls=streak.count,
                    )
                continue
            if failed := streak.succeeded():
                log.info("polling deployment generations works again", failed_polls=failed)
            if seen is not None:
                for deployment_id, generation in now.items():
                    if seen.get(deployment_id) != generation:
                        hub.changed(deployment_id)
                for gone in set(seen) - set(now):
                    hub.changed(gone)
            seen = now

    return Feed(run, "deployment-poller")
