"""The migrations build the schema the table classes describe, on SQLite and PostgreSQL:
alembic's autogenerate finds nothing to add, drop or alter after ``upgrade``."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import controlplane.store.deployment_tables
import controlplane.store.tables  # noqa: F401  (registers the tables)
from controlplane.store.engine import create_engines
from controlplane.store.migrate import upgrade


def test_upgrade_leaves_nothing_for_autogenerate(db_url: str) -> None:
    engines = create_engines(db_url)
    try:
        upgrade(engines)
        with engines.write.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        assert "drift_windows" in SQLModel.metadata.tables
    finally:
        engines.dispose()
