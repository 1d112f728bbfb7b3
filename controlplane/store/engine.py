"""Database engines: SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from modelplane.errors import InvalidArgument, Unavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: PostgreSQL's ``lock_timeout`` for connections that have none of their own (PGOPTIONS, the
#: URL's ``options`` or the server's settings may give one).
LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS


class WriteGate:
    """Makes SQLite writers queue before ``BEGIN IMMEDIATE`` rather than inside it.

    SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps
    between tries (up to 100 ms each), so under concurrent writes most of a writer's wait is
    sleep past the moment the lock was freed. The gate holds a thread lock for this process
    and an exclusive ``flock`` on ``PATH.write-lock`` for the others: a writer blocks in the
    kernel and is woken as soon as the previous one commits. The busy timeout still covers
    writers that do not take the gate (another program, a migration). Reentrant per thread;
    a thread that cannot enter within ``timeout`` seconds gets UNAVAILABLE, as SQLite's busy
    timeout would have given it.
    """

    def __init__(
        self, lock_path: str | None, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000
    ) -> None:
        self.lock_path = lock_path
        self.timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.timeout):
            raise Unavailable(
                "the database is busy with other writes; retry shortly",
                reason="DATABASE_UNAVAILABLE",
            )
        try:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._acquire_file()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _acquire_file(self) -> None:
        if self.lock_path is None:
            return
        if self._fd is None or self._pid != os.getpid():
            # A forked worker opens its own file: a lock on an inherited descriptor would be
            # shared with the parent rather than exclusive.
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)


@dataclass
class Engines:
    """A read engine and a write engine (on PostgreSQL one pool; reads in autocommit mode).

    ``write_gate()`` wraps every write transaction: on SQLite a :class:`WriteGate`, on
    PostgreSQL nothing (row locks and MVCC let writers proceed together)."""

    read: Engine
    write: Engine
    dialect: str
    write_gate: Callable[[], AbstractContextManager[None]] = field(default=contextlib.nullcontext)

    def dispose(self) -> None:
        self.write.dispose()
        if self.read.pool is not self.write.pool:
            self.read.dispose()


def normalize_url(url: str) -> str:
    """Map ``postgresql://`` to the psycopg 3 driver; check the scheme."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+psycopg://", "sqlite:///", "sqlite+pysqlite:///")):
        return url
    raise InvalidArgument(
        f"unsupported database URL {url.split('://', 1)[0]!r}: use sqlite:///PATH or postgresql://...",
        reason="INVALID_DB_URL",
    )


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Write transactions take the write lock up front, so two writers never deadlock on a
        # lock upgrade (which the busy timeout cannot resolve).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_engines(url: str) -> Engines:
    """Engines for ``url``; for SQLite the parent folder is created."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk:
            Path(str(parsed.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return Engines(
            read=_sqlite_engine(url, immediate=False),
            write=_sqlite_engine(url, immediate=True),
            dialect="sqlite",
            write_gate=WriteGate(f"{parsed.database}.write-lock" if on_disk else None),
        )
    # Connections are recycled rather than pinged before each use: a ping is one more round
    # trip on every transaction.
    engine = create_engine(url, pool_recycle=300, pool_size=10, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # A write waits for a row lock at most as long as SQLite waits for its write lock: one
        # stuck lock holder must not keep every waiting request's connection (and then the
        # pool). Set per session, so that PGOPTIONS and a URL's own options still apply, and
        # a lock_timeout they set is kept.
        with dbapi_conn.cursor() as cur:
            cur.execute("SHOW lock_timeout")
            if cur.fetchone()[0] == "0":
                cur.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        dbapi_conn.commit()

    # Reads run in autocommit mode on the same pool. Under READ COMMITTED every statement takes
    # its own snapshot whether or not a transaction is open, so this changes nothing about
    # what a read sees, and spares two round trips per read (BEGIN and ROLLBACK).
    read = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Engines(read=read, write=engine, dialect="postgresql")
