"""``modelplane controlplane db``: the schema's migrations run on their own, on SQLite and
PostgreSQL. ``current`` says where a database stands, ``downgrade`` takes it back (after asking)
and ``serve`` brings it up again, ``stamp`` repairs a lost ``alembic_version``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controlplane.store import Store
from controlplane.store.engine import normalize_url
from controlplane.store.migrate import head, history
from modelplane import Client
from modelplane.cli import main
from modelplane.testing.processes import controlplane
from tests.controlplane.conftest import serve_refused, start_controlplane


def _db(
    capsys: pytest.CaptureFixture[str], url: str, *argv: str, json_out: bool = False
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(
        [*(["--output", "json"] if json_out else []), "controlplane", "db", *argv, "--db", url]
    )
    out, err = capsys.readouterr()
    return code, out, err


def _keep_a_model(tmp: Path, url: str) -> None:
    """Serve ``url`` with this release in process (migrating it) and create the model
    ``kept`` in it."""
    server = start_controlplane(tmp, url)
    try:
        with server.client() as c:
            c.create_model("kept")
    finally:
        server.handle.stop(0)


def _models_served(tmp: Path, url: str, name: str) -> list[str]:
    """The models that a server of this release (called ``name``) started on ``url`` lists."""
    server = controlplane(tmp, url, name=name).start()
    try:
        with Client(server.address, principal="alice") as c:
            return [m.name for m in c.list_models()]
    finally:
        server.stop()


def _revision(url: str) -> str | None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _execute(url: str, sql: str) -> None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def test_current_and_upgrade(own_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    if own_db.startswith("sqlite"):
        Path(own_db.removeprefix("sqlite:///")).touch()  # an empty database
    code, out, _ = _db(capsys, own_db, "current", json_out=True)
    doc = json.loads(out)
    assert code == 0 and doc["revision"] == "" and doc["has_tables"] is False
    assert doc["pending"] == [m.revision for m in history()]
    code, out, _ = _db(capsys, own_db, "upgrade")
    assert code == 0 and f"upgraded the schema from none to {head()}" in out
    assert _revision(own_db) == head()
    code, out, _ = _db(capsys, own_db, "current")
    assert (
        code == 0 and out.strip() == f"revision {head()}: this release's newest; nothing to migrate"
    )
    code, out, _ = _db(capsys, own_db, "current", json_out=True)
    assert json.loads(out) | {"database": ""} == {
        "database": "",
        "revision": head(),
        "head": head(),
        "known": True,
        "pending": [],
        "has_tables": True,
    }
    code, out, _ = _db(capsys, own_db, "upgrade")
    assert code == 0 and f"at {head()} already" in out


def test_history_lists_every_revision(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--output", "json", "controlplane", "db", "history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    revisions = [r["revision"] for r in doc["revisions"]]
    assert revisions == [f"{n:04d}" for n in range(1, len(revisions) + 1)]
    assert doc["head"] == revisions[-1] == head()
    assert doc["revisions"][0]["down_revision"] == ""
    assert all(r["description"] for r in doc["revisions"])


def test_downgrade_asks_then_serve_upgrades_again(
    own_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _keep_a_model(tmp_path, own_db)
    previous = history()[-2].revision
    # No terminal to ask on, no --yes: nothing changes.
    code, _, err = _db(capsys, own_db, "downgrade", previous)
    assert code == 2 and "pass --yes" in err
    assert _revision(own_db) == head()
    code, out, _ = _db(capsys, own_db, "downgrade", "-1", "--yes")
    assert code == 0 and f"downgraded the schema from {head()} to {previous}" in out
    assert _revision(own_db) == previous
    code, out, _ = _db(capsys, own_db, "current", json_out=True)
    assert json.loads(out)["pending"] == [head()]
    # This release's server upgrades it again at start, and what it held is there.
    assert _models_served(tmp_path, own_db, "again") == ["models/kept"]
    assert _revision(own_db) == head()


def test_a_revision_that_cannot_be_used_is_refused(
    own_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Store.open(own_db).close()
    for argv in (("downgrade", "nope", "--yes"), ("stamp", "nope"), ("upgrade", "0099")):
        code, out, err = _db(capsys, own_db, *argv)
        assert code == 2 and out == "", err
        assert "(UNKNOWN_REVISION)" in err and f"'{argv[1]}'" in err
        assert "db history" in err
    # A revision above the database's is no downgrade.
    code, _, err = _db(capsys, own_db, "downgrade", "0002", "--yes")
    assert code == 0
    code, _, err = _db(capsys, own_db, "downgrade", "0003", "--yes")
    assert code == 2 and "(UNKNOWN_REVISION)" in err and "not a valid downgrade target" in err
    assert _revision(own_db) == "0002"


def test_stamp_repairs_a_lost_alembic_version(
    own_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _keep_a_model(tmp_path, own_db)
    _execute(own_db, "DROP TABLE alembic_version")
    code, out, _ = _db(capsys, own_db, "current")
    assert code == 0 and f"db stamp {head()}" in out and "lost or emptied" in out
    refused = serve_refused(tmp_path, "--listen", "127.0.0.1:0", db=own_db)
    assert refused.returncode == 2 and "(MIGRATION_FAILED)" in refused.stderr
    assert (
        "modelplane controlplane db current" in refused.stderr and "db stamp REV" in refused.stderr
    )
    code, out, _ = _db(capsys, own_db, "stamp", "head")
    assert code == 0 and f"recorded revision {head()} as the schema's (it was none)" in out
    assert _models_served(tmp_path, own_db, "stamped") == ["models/kept"]


def test_a_newer_schema_is_named_and_can_be_stamped(
    own_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Store.open(own_db).close()
    _execute(own_db, "UPDATE alembic_version SET version_num = '0099'")
    code, out, _ = _db(capsys, own_db, "current")
    assert code == 0 and "revision 0099, which this release does not know" in out
    code, _, err = _db(capsys, own_db, "downgrade", "-1", "--yes")
    assert code == 2 and "(SCHEMA_TOO_NEW)" in err
    assert _revision(own_db) == "0099"
    code, out, _ = _db(capsys, own_db, "stamp", head())
    assert code == 0 and _revision(own_db) == head()


def test_commands_other_than_upgrade_create_no_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    for argv in (("current",), ("downgrade", "base", "--yes"), ("stamp", "head")):
        code, _, err = _db(capsys, url, *argv)
        assert code == 2 and "there is no database file at" in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_upgrade_says_where_the_schema_stands(
    own_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database stamped at a revision its tables are past fails a migration. On SQLite the
    migrations before the failing one stay applied (each commits on its own), on PostgreSQL
    none do: the error says which revision the schema is at now, and points at the stamp."""
    assert _db(capsys, own_db, "upgrade")[0] == 0
    code, _, _ = _db(capsys, own_db, "stamp", "0010")
    assert code == 0
    code, _, err = _db(capsys, own_db, "upgrade")
    assert code == 2, err
    now = _revision(own_db)
    assert "(MIGRATION_FAILED)" in err and "`db stamp`" in err
    if now == "0010":
        assert "the schema is still at revision 0010" in err
    else:
        assert f"the schema is now at revision {now} (it was at 0010)" in err
    assert _db(capsys, own_db, "stamp", "head")[0] == 0  # the repair the message points at
    assert _db(capsys, own_db, "upgrade")[1].strip().endswith("nothing to migrate")
