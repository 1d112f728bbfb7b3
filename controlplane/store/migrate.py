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
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from controlplane.store.engine import Engines
from modelplane.errors import FailedPrecondition

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
    """Bring the schema to ``revision``.

    FAILED_PRECONDITION (SCHEMA_TOO_NEW) when the database is at a revision this release does
    not know: a newer release migrated it (an image rolled back after a newer replica
    started), and this one can neither upgrade it nor serve it safely."""
    if engines.dialect == "sqlite":
        with _sqlite_lock(engines):
            _upgrade(engines, revision)
    else:
        _upgrade(engines, revision)


def _upgrade(engines: Engines, revision: str) -> None:
    cfg = alembic_config()
    with engines.write.connect() as conn:
        serving_timeout = None
        if engines.dialect == "postgresql":
            # Serving connections give up on a lock after a while (see create_engines); a
            # migration waits for the other replicas' migration and for its tables instead.
            serving_timeout = conn.execute(text("SHOW lock_timeout")).scalar()
            conn.execute(text("SET lock_timeout = 0"))
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
        try:
            _refuse_unknown_revision(conn, cfg)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if engines.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                # Back to the pool as it came (RESET would drop the timeout set on connect).
                conn.execute(
                    text("SELECT set_config('lock_timeout', :v, false)"), {"v": serving_timeout}
                )
                conn.commit()


def _refuse_unknown_revision(conn: Connection, cfg: Config) -> None:
    """Raise SCHEMA_TOO_NEW when the database's revision is not one of our migrations."""
    current = MigrationContext.configure(conn).get_current_heads()
    conn.commit()  # end the read, so that the upgrade starts a transaction of its own
    script = ScriptDirectory.from_config(cfg)
    known = {s.revision for s in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        head = script.get_current_head() or "none"
        raise FailedPrecondition(
            f"the database's schema is at revision {', '.join(unknown)}, which this release "
            f"does not know (its newest is {head}): a newer release migrated it; run a "
            "release that knows it",
            reason="SCHEMA_TOO_NEW",
            metadata={"revision": ",".join(unknown), "head": head},
        )
