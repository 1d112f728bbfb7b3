"""Revisions 0008 and 0013 once added the columns that 0009 and 0014 add now (commits 47d1439
and 249cc99..3fce702): a database migrated by those commits has them already. The current
migrations upgrade such a database, keep its values, and end with the very schema a fresh
database gets, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import create_engine, inspect, text

from controlplane.store.engine import create_engines, normalize_url
from controlplane.store.migrate import downgrade, status, upgrade
from tests.conftest import private_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_dbs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Two empty databases of the test's own on one backend: (upgraded, fresh)."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("shapes")
        yield f"sqlite:///{folder / 'upgraded.db'}", f"sqlite:///{folder / 'fresh.db'}"
        return
    request.getfixturevalue("pg_url")  # skips without a server
    tag = uuid.uuid4().hex[:10]
    with (
        private_database(f"modelplane_shape_up_{tag}") as up,
        private_database(f"modelplane_shape_fresh_{tag}") as fresh,
    ):
        yield up, fresh


def describe(url: str) -> list[str]:
    """The schema as SQLAlchemy's inspector sees it, column order included (and on
    PostgreSQL its functions, triggers and sequences), without ``alembic_version``."""
    engine = create_engine(normalize_url(url))
    lines = []
    try:
        ins = inspect(engine)
        for t in sorted(ins.get_table_names()):
            if t == "alembic_version":
                continue
            lines.append(f"TABLE {t}")
            for c in ins.get_columns(t):
                lines.append(f"col {c['name']} {c['type']!r} {c['nullable']} {c.get('default')}")
            lines.append(f"pk {ins.get_pk_constraint(t).get('constrained_columns')}")
            for ix in sorted(ins.get_indexes(t), key=lambda x: str(x["name"])):
                lines.append(f"index {ix['name']} {ix['column_names']} {ix['unique']}")
            for u in sorted(ins.get_unique_constraints(t), key=lambda x: str(x["name"])):
                lines.append(f"unique {u['name']} {u['column_names']}")
            for f in sorted(ins.get_foreign_keys(t), key=lambda x: str(x["constrained_columns"])):
                lines.append(f"fk {f['constrained_columns']} {f['referred_table']}")
            for ck in sorted(ins.get_check_constraints(t), key=lambda x: str(x["name"])):
                lines.append(f"check {ck['name']} {ck['sqltext']}")
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                for query in (
                    "SELECT p.proname, md5(pg_get_functiondef(p.oid)) FROM pg_proc p JOIN "
                    "pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' "
                    "ORDER BY 1",
                    "SELECT tgname, tgrelid::regclass::text FROM pg_trigger "
                    "WHERE NOT tgisinternal ORDER BY 1",
                    "SELECT sequencename, '' FROM pg_sequences WHERE schemaname = 'public' "
                    "ORDER BY 1",
                ):
                    lines.extend(f"{a} {b}" for a, b in conn.execute(text(query)))
    finally:
        engine.dispose()
    return lines


@contextmanager
def _ops(url: str) -> Iterator[Operations]:
    """Alembic operations on ``url``, committed at the end (batch mode on SQLite)."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            yield Operations(MigrationContext.configure(conn))
    finally:
        engine.dispose()


def _at(url: str, revision: str) -> None:
    """The database at ``revision``: upgraded to the head, then downgraded."""
    engines = create_engines(url)
    try:
        upgrade(engines)
        downgrade(engines, revision)
        assert status(engines).revision == revision
    finally:
        engines.dispose()


def _upgrade(url: str) -> None:
    engines = create_engines(url)
    try:
        upgrade(engines)
        assert status(engines).pending == ()
    finally:
        engines.dispose()


def _fresh(url: str) -> list[str]:
    _upgrade(url)
    return describe(url)


def test_a_database_from_the_early_0008_upgrades(two_dbs: tuple[str, str]) -> None:
    up, fresh = two_dbs
    _at(up, "0008")
    with _ops(up) as op, op.batch_alter_table("rollouts") as batch:
        # As 0008 added it at 47d1439.
        batch.add_column(
            sa.Column("champion_before", sa.JSON(), nullable=False, server_default="{}")
        )
    _upgrade(up)
    assert describe(up) == _fresh(fresh)


#: drift_windows as 0013 made it at 249cc99..3fce702: rollout_id after version, no default.
_EARLY_0013 = [
    sa.Column("deployment_id", sa.String(length=63), nullable=False),
    sa.Column("arm", sa.String(length=16), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("rollout_id", sa.String(length=63), nullable=False),
    sa.Column("baseline_sha256", sa.String(length=64), nullable=False),
    sa.Column("rows", sa.BigInteger(), nullable=False),
    sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reports", sa.BigInteger(), nullable=False),
    sa.Column("body", sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint("deployment_id", "arm"),
]


def test_a_database_from_the_early_0013_upgrades_and_keeps_its_windows(
    two_dbs: tuple[str, str],
) -> None:
    up, fresh = two_dbs
    _at(up, "0013")
    with _ops(up) as op:
        op.drop_table("drift_windows")
        op.create_table("drift_windows", *_EARLY_0013)
        op.execute(
            "INSERT INTO drift_windows (deployment_id, arm, version, rollout_id, "
            "baseline_sha256, rows, reports, body) VALUES "
            "('fraud', 'candidate', 2, 'ro-1', 'ab', 150, 3, '{}'), "
            "('fraud', 'champion', 1, '', 'cd', 90, 2, '{}')"
        )
    _upgrade(up)
    assert describe(up) == _fresh(fresh)
    engine = create_engine(normalize_url(up))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT arm, rollout_id, rows FROM drift_windows ORDER BY arm")
            ).all()
            assert [tuple(r) for r in rows] == [("candidate", "ro-1", 150), ("champion", "", 90)]
            # The server default is there too, as on a fresh database.
            conn.execute(
                text(
                    "INSERT INTO drift_windows (deployment_id, arm, version, baseline_sha256, "
                    "rows, reports, body) VALUES ('fraud', 'shadow', 3, 'ef', 0, 0, '{}')"
                )
            )
            added = "SELECT rollout_id FROM drift_windows WHERE arm = 'shadow'"
            assert conn.execute(text(added)).scalar_one() == ""
            conn.rollback()
    finally:
        engine.dispose()
