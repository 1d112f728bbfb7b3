"""A write the database refuses is reported for what refused it: a duplicate key is
ALREADY_EXISTS, a missing referent NOT_FOUND, and a CHECK or NOT NULL constraint or a trigger
INTERNAL (DATABASE_CONSTRAINT), with the database's own message in the log only; on SQLite and
PostgreSQL, at the store's boundary and through a real control plane."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import structlog.testing
from sqlalchemy import create_engine, text

from controlplane.store.engine import normalize_url
from controlplane.store.store import _translated
from modelplane.errors import AlreadyExists, Internal, NotFound
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel, start_controlplane

SECRET = "disk says no to row 42"


def test_each_refusal_is_mapped_for_what_refused_it(own_db: str) -> None:
    engine = create_engine(normalize_url(own_db))
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("PRAGMA foreign_keys=ON"))
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
                "n INTEGER NOT NULL CHECK (n > 0), parent INTEGER REFERENCES parent (id))"
            )
        )
        conn.execute(text("INSERT INTO child (id, name, n) VALUES (1, 'a', 1)"))
    cases = [
        ("INSERT INTO child (id, name, n) VALUES (1, 'b', 1)", AlreadyExists, "ALREADY_EXISTS"),
        ("INSERT INTO child (id, name, n) VALUES (2, 'a', 1)", AlreadyExists, "ALREADY_EXISTS"),
        ("INSERT INTO child (id, name, n, parent) VALUES (3, 'c', 1, 9)", NotFound, None),
        ("INSERT INTO child (id, name, n) VALUES (4, 'd', NULL)", Internal, "a NOT NULL"),
        ("INSERT INTO child (id, name, n) VALUES (5, 'e', -1)", Internal, "a CHECK"),
    ]
    try:
        with structlog.testing.capture_logs() as logs:
            for statement, error, words in cases:
                with pytest.raises(error) as raised, _translated(), engine.begin() as conn:
                    if conn.dialect.name == "sqlite":
                        conn.execute(text("PRAGMA foreign_keys=ON"))
                    conn.execute(text(statement))
                if error is Internal:
                    assert raised.value.reason == "DATABASE_CONSTRAINT", statement
                    assert (
                        words in raised.value.message
                        and "nothing was stored" in raised.value.message
                    )
                    # The database's words (which may quote the schema or values) stay in the log.
                    assert "child" not in raised.value.message
                elif error is AlreadyExists:
                    assert raised.value.reason == words, statement
        refusals = [e for e in logs if e["event"] == "the database refused a write"]
        assert [e["refused_by"] for e in refusals] == [
            "a NOT NULL constraint",
            "a CHECK constraint",
        ]
        # The database's own words, with its error code, are in the log.
        assert refusals[0]["error"].endswith(("(SQLITE_CONSTRAINT_NOTNULL)", "(23502)"))
        assert refusals[1]["error"].endswith(("(SQLITE_CONSTRAINT_CHECK)", "(23514)"))
    finally:
        engine.dispose()


def _refuse_set_alias(url: str, errcode: str = "") -> None:
    """A trigger on the audit trail that refuses the event of a SetAlias, as a failing audit
    write would; ``errcode`` (PostgreSQL) is the SQLSTATE its RAISE gives."""
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_audit"))
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                    f"WHEN NEW.action = 'SetAlias' BEGIN SELECT RAISE(ABORT, '{SECRET}'); END"
                )
            )
        else:
            using = f" USING ERRCODE = '{errcode}'" if errcode else ""
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.action = 'SetAlias' THEN RAISE EXCEPTION '{SECRET}'{using}; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_audit ON audit_events"))
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
                )
            )
    engine.dispose()


def test_a_trigger_that_refuses_the_audit_write_is_no_duplicate(
    own_db: str, trained_model: TrainedModel, tmp_path: Path
) -> None:
    cp = start_controlplane(tmp_path, own_db)
    try:
        with cp.client("alice") as alice:
            model_id = unique()
            alice.create_model(model_id)
            version = int(alice.register_version(model_id, trained_model.onnx).version)
            kinds = [("", "a trigger")]
            if own_db.startswith("postgresql"):
                kinds.append(("check_violation", "a CHECK constraint"))
            for errcode, words in kinds:
                _refuse_set_alias(own_db, errcode)
                with pytest.raises(Internal) as refused:
                    alice.set_alias(model_id, "staging", version)
                assert refused.value.reason == "DATABASE_CONSTRAINT"
                assert words in refused.value.message
                assert SECRET not in refused.value.message
                assert "already exists" not in refused.value.message
                # Rolled back with the audit event: nothing half-written.
                assert not any(a.alias == "staging" for a in alice.list_aliases(model_id))
    finally:
        cp.handle.stop(0)
