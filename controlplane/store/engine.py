"""Database engines: SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, QueuePool, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import queue as sqla_queue

from modelplane.errors import FailedPrecondition, InvalidArgument, Unavailable
from modelplane.server.context import current_context

log = structlog.get_logger("modelplane.controlplane")

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: PostgreSQL's ``lock_timeout`` for connections that have none of their own (PGOPTIONS, the
#: URL's ``options`` or the server's settings may give one).
LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
#: How long before its call's deadline a PostgreSQL statement stops waiting, and after which a
#: write is no longer committed: time to roll back and for the answer to reach the caller, so
#: that nothing is committed once the caller has been told the call failed.
DEADLINE_MARGIN_S = 0.05


def call_time_left() -> float | None:
    """Seconds left before the deadline of the call this thread serves (negative once past);
    None outside calls (background work) and for a call without a deadline."""
    deadline = current_context().deadline
    return None if deadline is None else deadline - time.monotonic()


class WriteGate:
    """Makes SQLite writers queue before ``BEGIN IMMEDIATE`` rather than inside it.

    SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps
    between tries (up to 100 ms each), so under concurrent writes most of a writer's wait is
    sleep past the moment the lock was freed. The gate holds a thread lock for this process
    and an exclusive ``flock`` on ``PATH.write-lock`` for the others: a writer blocks in the
    kernel and is woken as soon as the previous one commits. The busy timeout still covers
    writers that do not take the gate (another program, a migration). Reentrant per thread.

    A thread that cannot enter within ``timeout`` seconds (the thread lock and the file lock
    together), or before the deadline of the call it serves, gets UNAVAILABLE, as SQLite's
    busy timeout would have given it, and writes nothing. The kernel's wait for the file lock
    has no time limit, so it runs on a thread of its own (:class:`_FileWaiter`) that the
    writer stops waiting for at the limit, or at once when the gate is closed (the server
    stopping); a lock it gets after that is released unused, or kept for the next writer of
    this process that comes meanwhile.

    Once inside, a writer looks whether the database file is still the one the store opened
    (:attr:`file`): one deleted or replaced under the server is refused, FAILED_PRECONDITION.
    """

    def __init__(
        self, lock_path: str | None, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000
    ) -> None:
        self.lock_path = lock_path
        self.timeout = timeout
        #: The database file, once the store has noted which it is: a write that finds it
        #: deleted or replaced is refused (see :class:`DatabaseFile`).
        self.file: DatabaseFile | None = None
        self._lock = threading.RLock()
        self._depth = 0
        #: The descriptor this process locks the file through while no waiter has it.
        self._fd: int | None = None
        #: The descriptor holding the file lock while a writer is inside.
        self._held: int | None = None
        self._waiter: _FileWaiter | None = None
        self._pid = 0
        self._closed = threading.Event()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        caller = current_context().deadline
        if caller is not None:
            # A write its caller no longer waits for is never applied after it gave up.
            deadline = min(deadline, caller)
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _busy()
        try:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._acquire_file(deadline)
                    if self.file is not None:
                        self.file.check()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._held is not None:
                    fcntl.flock(self._held, fcntl.LOCK_UN)
                    self._held = None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop waiting: writers waiting for another process's lock now, or from now on,
        get UNAVAILABLE at once (a write that finds the lock free still proceeds)."""
        self._closed.set()

    def _acquire_file(self, deadline: float) -> None:
        if self.lock_path is None:
            return
        if self._pid != os.getpid():
            # A forked worker opens its own file: a lock on an inherited descriptor would be
            # shared with the parent rather than exclusive (and the parent's waiter is not
            # running here).
            self._fd, self._waiter, self._pid = None, None, os.getpid()
        waiter = self._waiter
        if waiter is None or not waiter.want():
            if waiter is not None:  # it ended without the lock: its descriptor is free
                self._fd, self._waiter = waiter.fd, None
            fd = self._fd if self._fd is not None else self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._fd = None
                waiter = self._waiter = _FileWaiter(fd)
            else:
                self._fd = self._held = fd
                return
        if not waiter.wait(deadline, self._closed):
            log.warning(
                "a write gave up waiting for another process's write lock",
                lock=self.lock_path,
                stopping=self._closed.is_set(),
            )
            raise _busy()
        self._waiter = None
        self._fd = self._held = waiter.fd

    def _open(self) -> int:
        assert self.lock_path is not None
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Unavailable(
                f"cannot open the database's write lock {self.lock_path}: {exc.strerror}",
                reason="DATABASE_UNAVAILABLE",
            ) from exc


class _FileWaiter:
    """A blocking ``flock`` of ``fd`` on a daemon thread, which writers wait for with a limit.

    Once it has the lock it hands it to the writer that wants it, or releases it when none
    does (the last one gave up). A writer that comes while it still waits takes over the wait
    (:meth:`want`), so one waiter at most waits per process however many writers gave up.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._mutex = threading.Lock()
        self._granted = threading.Event()
        self._failed = threading.Event()
        self._wanted = True
        self._ended = False
        threading.Thread(target=self._run, name="sqlite-write-lock", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            log.exception("waiting for the SQLite write lock failed")
            with self._mutex:
                self._ended = True
            self._failed.set()  # the writer waiting fails now, not at its limit
            return
        with self._mutex:
            if self._wanted:
                self._granted.set()
                return
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self._ended = True

    def want(self) -> bool:
        """Take over the wait; False when the waiter has ended (its descriptor is free)."""
        with self._mutex:
            if self._ended:
                return False
            self._wanted = True
            return True

    def wait(self, deadline: float, stop: threading.Event) -> bool:
        """Whether the lock came before ``deadline`` (monotonic), before ``stop`` was set and
        without the wait failing; on False the lock is no longer wanted, and this caller must
        not use it."""
        while not self._granted.wait(max(0.0, min(deadline - time.monotonic(), _STOP_POLL_S))):
            if stop.is_set() or self._failed.is_set() or time.monotonic() >= deadline:
                with self._mutex:
                    if self._granted.is_set():  # came just now: still ours
                        return True
                    self._wanted = False
                    return False
        return True


#: How often a writer waiting for another process's lock looks whether the gate was closed.
_STOP_POLL_S = 0.1


def _busy() -> Unavailable:
    return Unavailable(
        "the database is busy with other writes; retry shortly", reason="DATABASE_UNAVAILABLE"
    )


class DatabaseFile:
    """The SQLite database file by its identity (device and inode) when the store opened it.

    A file deleted (or replaced) while the server runs is not noticed by SQLite in WAL mode:
    the open connections go on writing to the unlinked inode, and every change, those before
    the deletion included, is gone once they close. :meth:`check` refuses writes from the
    moment the path names another file or none; the first time, it logs an error and calls
    the :attr:`on_lost` hooks (the server reports NOT_SERVING).
    """

    def __init__(self, path: str, identity: tuple[int, int]) -> None:
        self.path = path
        self.identity = identity
        #: Called once, when the file is found deleted or replaced.
        self.on_lost: list[Callable[[], None]] = []
        self._reason: str | None = None
        self._mutex = threading.Lock()

    @classmethod
    def of(cls, path: str) -> DatabaseFile:
        """The file at ``path`` now."""
        st = os.stat(path)
        return cls(path, (st.st_dev, st.st_ino))

    def lost(self) -> str | None:
        """None while the path names the file the store opened; else why not, as a reason
        (``DATABASE_GONE``: no file there; ``DATABASE_REPLACED``: another one)."""
        if self._reason is not None:
            return self._reason
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            reason = "DATABASE_GONE"
        except OSError:
            return None  # cannot tell (no search permission): SQLite's own errors will say
        else:
            if (st.st_dev, st.st_ino) == self.identity:
                return None
            reason = "DATABASE_REPLACED"
        with self._mutex:
            if self._reason is not None:
                return self._reason
            self._reason = reason
        log.error(
            "the database file was deleted or replaced while the server ran: writes are "
            "refused from now on, as they would be lost; restore the file and restart the server",
            path=self.path,
            reason=reason,
        )
        for hook in self.on_lost:
            try:
                hook()
            except Exception:
                log.exception("a hook for a lost database file failed")
        return reason

    def check(self) -> None:
        """Refuse (FAILED_PRECONDITION) a read or write once the file was deleted or
        replaced."""
        reason = self.lost()
        if reason is not None:
            raise database_lost(reason)


def database_lost(reason: str) -> FailedPrecondition:
    """The refusal of a write to a database file deleted (``DATABASE_GONE``) or replaced
    (``DATABASE_REPLACED``) under the running server."""
    what = "deleted" if reason == "DATABASE_GONE" else "replaced by another file"
    return FailedPrecondition(
        f"the database file was {what} while the server ran; the server reads and stores "
        "nothing more (a change now would be lost at the next start): an operator must "
        "restore the database file and restart the server",
        reason=reason,
    )


class _DeadlineQueue(sqla_queue.Queue[ConnectionPoolEntry]):
    """A pool's idle connections; a wait for one ends at the deadline of the call it is for,
    when that comes before the pool's timeout."""

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        left = call_time_left() if block else None
        if left is not None:
            timeout = max(0.0, left if timeout is None else min(timeout, left))
        return super().get(block, timeout)


class DeadlinePool(QueuePool):
    """A :class:`QueuePool` whose callers stop waiting for a connection at their call's
    deadline: a caller that has gone does not queue behind the others only to give up later."""

    _queue_class = _DeadlineQueue


#: Sets a PostgreSQL transaction's lock and statement time limits (till it ends).
_SET_LIMITS = text(
    "SELECT set_config('lock_timeout', :lock_ms, true), "
    "set_config('statement_timeout', :statement_ms, true)"
)


def limit_transaction(conn: Connection, left: float) -> None:
    """Make each statement of the PostgreSQL transaction open on ``conn`` wait for a lock and
    run for at most ``left`` seconds (less :data:`DEADLINE_MARGIN_S`): the call's time left.

    A limit the connection has of its own (``lock_timeout``, ``statement_timeout``, from
    PGOPTIONS, the URL or the server) is kept where it is shorter. A statement stopped by
    these fails as a lock that does not come does (UNAVAILABLE), and its transaction rolls
    back."""
    own_lock, own_statement = conn.connection.info.get("limits_ms", (LOCK_TIMEOUT_MS, 0))
    ms = max(1, int((left - DEADLINE_MARGIN_S) * 1000))
    conn.execute(
        _SET_LIMITS,
        {
            "lock_ms": str(min(own_lock or ms, ms)),
            "statement_ms": str(min(own_statement or ms, ms)),
        },
    )


@dataclass
class Engines:
    """A read engine and a write engine (on PostgreSQL one pool; reads in autocommit mode).

    ``write_gate()`` wraps every write transaction: on SQLite a :class:`WriteGate`, on
    PostgreSQL nothing (row locks and MVCC let writers proceed together)."""

    read: Engine
    write: Engine
    dialect: str
    write_gate: Callable[[], AbstractContextManager[None]] = field(default=contextlib.nullcontext)
    #: SQLite: the database file, once :meth:`watch_file` has noted which it is.
    file: DatabaseFile | None = None

    def watch_file(self) -> None:
        """SQLite: note which file the database is (connecting first, which creates it if
        need be), so that writes are refused once it is deleted or replaced."""
        if self.dialect != "sqlite" or not isinstance(self.write_gate, WriteGate):
            return
        path = self.write.url.database
        if not path or path == ":memory:":
            return
        with self.read.connect():
            pass
        self.file = self.write_gate.file = DatabaseFile.of(path)

    def dispose(self) -> None:
        if isinstance(self.write_gate, WriteGate):
            self.write_gate.close()
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
    engine = create_engine(
        url, poolclass=DeadlinePool, pool_recycle=300, pool_size=10, max_overflow=20
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        # A write waits for a row lock at most as long as SQLite waits for its write lock: one
        # stuck lock holder must not keep every waiting request's connection (and then the
        # pool). Set per session, so that PGOPTIONS and a URL's own options still apply, and
        # a lock_timeout they set is kept; what the session has is noted (in ms, 0 for none)
        # for limit_transaction, which never lengthens it.
        with dbapi_conn.cursor() as cur:
            cur.execute(
                "SELECT setting::bigint FROM pg_settings"
                " WHERE name IN ('lock_timeout', 'statement_timeout') ORDER BY name"
            )
            (lock_ms,), (statement_ms,) = cur.fetchall()
            if lock_ms == 0:
                cur.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
                lock_ms = LOCK_TIMEOUT_MS
        dbapi_conn.commit()
        record.info["limits_ms"] = (lock_ms, statement_ms)

    # Reads run in autocommit mode on the same pool. Under READ COMMITTED every statement takes
    # its own snapshot whether or not a transaction is open, so this changes nothing about
    # what a read sees, and spares two round trips per read (BEGIN and ROLLBACK).
    read = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Engines(read=read, write=engine, dialect="postgresql")
