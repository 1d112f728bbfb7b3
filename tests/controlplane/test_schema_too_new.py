"""A database migrated by a newer release (an image rolled back after a newer replica started):
the server refuses it with FAILED_PRECONDITION (SCHEMA_TOO_NEW), and the CLI exits 2 on one
line naming the revision, instead of an internal error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controlplane.store import Store
from controlplane.store.engine import normalize_url
from controlplane.store.migrate import alembic_config
from modelplane.errors import FailedPrecondition
from tests.conftest import private_database
from tests.controlplane.conftest import serve_refused

NEWER = "0099"


@contextmanager
def _own(db_url: str, prefix: str) -> Iterator[str]:
    """The SQLite file of ``db_url``, or a PostgreSQL database of the test's own."""
    if db_url.startswith("sqlite"):
        yield db_url
    else:
        with private_database(f"{prefix}_{uuid.uuid4().hex[:12]}") as url:
            yield url


@pytest.fixture
def newer_db(db_url: str) -> Iterator[str]:
    """A database of its own, migrated, then stamped with a revision this release lacks."""
    with _own(db_url, "modelplane_newer") as url:
        Store.open(url).close()
        _stamp(url, NEWER)
        yield url


def _stamp(url: str, revision: str) -> None:
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _revision(url: str) -> str:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    return str(revision)


def _head() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def test_opening_a_newer_schema_is_refused_and_leaves_it_alone(newer_db: str) -> None:
    with pytest.raises(FailedPrecondition) as err:
        Store.open(newer_db)
    assert err.value.reason == "SCHEMA_TOO_NEW"
    assert NEWER in err.value.message and _head() in err.value.message
    assert "run a release that knows it" in err.value.message
    assert _revision(newer_db) == NEWER


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_newer_schema_exits_2_in_one_line(
    newer_db: str, tmp_path: Path, workers: str
) -> None:
    result = serve_refused(tmp_path, "--listen", "127.0.0.1:0", "--workers", workers, db=newer_db)
    err = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    assert f"revision {NEWER}" in err[0] and "run a release that knows it" in err[0]
    assert "Traceback" not in result.stderr
    assert _revision(newer_db) == NEWER


@pytest.fixture
def foreign_db(db_url: str) -> Iterator[str]:
    """A database of its own holding another application's ``models`` table."""
    with _own(db_url, "modelplane_foreign") as url:
        engine = create_engine(normalize_url(url))
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE models (id INTEGER, owner TEXT)"))
            conn.execute(text("INSERT INTO models VALUES (1, 'payroll')"))
        engine.dispose()
        yield url


def test_a_migration_the_database_refuses_is_a_failed_precondition(
    foreign_db: str, tmp_path: Path
) -> None:
    with pytest.raises(FailedPrecondition) as err:
        Store.open(foreign_db)
    assert err.value.reason == "MIGRATION_FAILED"
    assert "models" in err.value.message and "no other application uses it" in err.value.message
    result = serve_refused(tmp_path, "--listen", "127.0.0.1:0", db=foreign_db)
    err_lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2, result.stderr
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), result.stderr
    assert "migrating the database schema failed" in err_lines[0]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    # The other application's table is as it was.
    engine = create_engine(normalize_url(foreign_db))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT owner FROM models")).scalar_one() == "payroll"
    engine.dispose()
