"""Apply Alembic migrations on start, safely when several replicas start at once.

PostgreSQL: a session-level advisory lock serialises the replicas. SQLite (one host only): an
exclusive lock on a file beside the database does.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from controlplane.store.engine import Engines

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Arbitrary 64-bit key of the migration advisory lock.
ADVISORY_LOCK_KEY = 0x6D6F64656C706C6E


def alembic_config() -> Config:
    """The Alembic configuration pointing at our migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@contextmanager
def _sqlite_lock(engines: Engines) -> Iterator[None]:
    database = make_url(str(engines.write.url)).database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engines: Engines, revision: str = "head") -> None:
    """Bring the schema to ``revision``."""
    if engines.dialect == "sqlite":
        with _sqlite_lock(engines):
            _upgrade(engines, revision)
    else:
        _upgrade(engines, revision)


def _upgrade(engines: Engines, revision: str) -> None:
    cfg = alembic_config()
    with engines.write.connect() as conn:
        if engines.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if engines.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()
