"""Database engines: SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from modelplane.errors import InvalidArgument

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass
class Engines:
    """A read engine and a write engine (on PostgreSQL one pool; reads in autocommit mode)."""

    read: Engine
    write: Engine
    dialect: str

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
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return Engines(
            read=_sqlite_engine(url, immediate=False),
            write=_sqlite_engine(url, immediate=True),
            dialect="sqlite",
        )
    # Connections are recycled rather than pinged before each use: a ping is one more round
    # trip on every transaction.
    engine = create_engine(url, pool_recycle=300, pool_size=10, max_overflow=20)
    # Reads run in autocommit mode on the same pool. Under READ COMMITTED every statement takes
    # its own snapshot whether or not a transaction is open, so this changes nothing about
    # what a read sees, and spares two round trips per read (BEGIN and ROLLBACK).
    read = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Engines(read=read, write=engine, dialect="postgresql")
