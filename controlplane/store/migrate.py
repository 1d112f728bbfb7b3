"""Apply Alembic migrations on start, safely when several replicas start at once.

PostgreSQL: a session-level advisory lock serialises the replicas. SQLite: the first write
transaction's exclusive lock does, through the migration's own BEGIN IMMEDIATE.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from controlplane.store.engine import Engines

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Arbitrary 64-bit key of the migration advisory lock.
ADVISORY_LOCK_KEY = 0x6D6F64656C706C6E


def alembic_config() -> Config:
    """The Alembic configuration pointing at our migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engines: Engines, revision: str = "head") -> None:
    """Bring the schema to ``revision``."""
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
