"""Backing up and restoring a SQLite control plane: ``modelplane controlplane backup`` copies
the database consistently while the server runs (copying the file does not: in WAL mode its
data is in the ``-wal`` file beside it), and the server refuses to start on a database that
holds nothing while the artifact root holds blobs, the mark of such a copy or of a wrong
``--db``."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.cli import main
from modelplane.testing.processes import Server, controlplane
from tests.controlplane.conftest import TrainedModel, serve_refused
from tests.controlplane.test_governance_evaluation import register


def _backup(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--output", "json", "controlplane", "backup", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _live(tmp: Path, trained: TrainedModel) -> tuple[Server, Path]:
    """A control plane on SQLite under ``tmp/live`` holding models/m1 with one version."""
    live = tmp / "live"
    live.mkdir()
    db = live / "cp.db"
    server = controlplane(live, f"sqlite:///{db}").start()
    with Client(server.address, principal="alice") as c:
        register(c, trained, "m1")
    return server, db


def _restored(tmp: Path, live: Path, database: Path | None) -> Path:
    """A folder holding a copy of the live artifact root (its key included) and ``database``
    as ``cp.db``."""
    folder = tmp / "restored"
    shutil.copytree(live / "artifacts", folder / "artifacts")
    if database is not None:
        shutil.copyfile(database, folder / "cp.db")
    return folder


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_backup_taken_while_serving_restores_everything_after_a_crash_as_documented(
    tmp_path: Path, trained_model: TrainedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    server, db = _live(tmp_path, trained_model)
    out = tmp_path / "backup.db"
    try:
        with Client(server.address, principal="alice") as c:
            audited = c.verify_audit()
            assert audited.ok
            code, doc_text, err = _backup(capsys, "--db", f"sqlite:///{db}", "--out", str(out))
            assert code == 0, err
            register(c, trained_model, "m1")
            c.create_model("after-the-backup")
    finally:
        server.kill()  # a crash: the -wal holds the writes since the backup
    doc = json.loads(doc_text)
    assert doc["models"] == 1 and doc["versions"] == 1
    assert doc["audit_events"] == audited.checked and doc["bytes"] == out.stat().st_size
    assert "artifact root" in err and "signing key" in err and "-wal and -shm" in err
    # One self-contained file: no -wal is needed beside it.
    assert not Path(f"{out}-wal").exists()
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert Path(f"{db}-wal").stat().st_size > 0
    # As the README says: the server stopped, the -wal and -shm files removed, the backup
    # copied in place.
    for stale in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(out, db)
    restored = controlplane(db.parent, f"sqlite:///{db}", name="restored").start()
    try:
        with Client(restored.address, principal="alice") as c:
            assert [m.name for m in c.list_models()] == ["models/m1"]
            assert len(list(c.list_versions("m1"))) == 1
            verified = c.verify_audit()
            assert verified.ok and verified.checked == audited.checked
            assert c.verify_version("m1", 1).ok
    finally:
        restored.stop()


def test_a_copy_taken_with_cp_while_serving_is_refused_at_start(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    server, db = _live(tmp_path, trained_model)
    try:
        folder = _restored(tmp_path, db.parent, db)  # cp controlplane.db, the -wal left behind
    finally:
        server.stop()
    copy = folder / "cp.db"
    with closing(sqlite3.connect(copy)) as conn:  # the premise: the copy holds no table
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    size = copy.stat().st_size
    result = serve_refused(folder, "--listen", "127.0.0.1:0")
    line = _error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert "(DATABASE_EMPTY_ARTIFACTS_PRESENT)" in line and "holds no registry" in line
    assert "copied with cp while the server ran" in line
    assert "modelplane controlplane backup" in line and "--allow-empty-database" in line
    # Refused before anything was migrated into it.
    assert copy.stat().st_size == size and not Path(f"{copy}-wal").exists()
    # The supervisor of --workers refuses it alike, before any worker starts.
    result = serve_refused(folder, "--listen", "127.0.0.1:0", "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "(DATABASE_EMPTY_ARTIFACTS_PRESENT)" in _error_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert copy.stat().st_size == size and not Path(f"{copy}-wal").exists()
    # A --db naming another (new) database is refused alike, and not created.
    typo = folder / "typo.db"
    result = serve_refused(folder, "--listen", "127.0.0.1:0", db=f"sqlite:///{typo}")
    assert result.returncode == 2 and "(DATABASE_EMPTY_ARTIFACTS_PRESENT)" in result.stderr
    assert not typo.exists()
    # On purpose, a new registry over the artifacts starts.
    fresh = controlplane(
        folder, f"sqlite:///{copy}", name="fresh", extra=("--allow-empty-database",)
    ).start()
    try:
        with Client(fresh.address, principal="alice") as c:
            assert list(c.list_models()) == []
    finally:
        fresh.stop()


def test_backup_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controlplane.store import Store

    db = tmp_path / "cp.db"
    Store.open(f"sqlite:///{db}").close()
    out = tmp_path / "backup.db"
    out.write_text("an earlier backup")
    code, _, err = _backup(capsys, "--db", f"sqlite:///{db}", "--out", str(out))
    assert code == 2 and f"{out} exists: pass --force" in err
    assert out.read_text() == "an earlier backup"
    code, _, err = _backup(capsys, "--db", f"sqlite:///{db}", "--out", str(out), "--force")
    assert code == 0, err
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 0
    code, _, err = _backup(capsys, "--db", f"sqlite:///{db}", "--out", str(db), "--force")
    assert code == 2 and "is the database itself" in err
    # A database that is not there is not created; one that is no registry is not copied.
    missing = tmp_path / "elsewhere" / "cp.db"
    code, _, err = _backup(capsys, "--db", f"sqlite:///{missing}", "--out", str(tmp_path / "x"))
    assert code == 2 and "there is no database file at" in err
    assert not missing.parent.exists() and not (tmp_path / "x").exists()
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE payroll (id INTEGER)")
        conn.commit()
    code, _, err = _backup(capsys, "--db", f"sqlite:///{other}", "--out", str(tmp_path / "y"))
    assert code == 2 and "holds no Modelplane registry" in err
    assert not (tmp_path / "y").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_postgresql_url_points_to_pg_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://modelplane:s3cret@db.example:5432/registry"
    code, out, err = _backup(capsys, "--db", url, "--out", str(tmp_path / "registry.dump"))
    line = _error_line(err)
    assert code == 2 and out == "" and "(USE_PG_DUMP)" in line
    assert (
        f"pg_dump -Fc -f {tmp_path / 'registry.dump'} "
        "postgresql://modelplane@db.example:5432/registry" in line
    )
    assert "pg_restore" in line and "s3cret" not in line
    assert not (tmp_path / "registry.dump").exists()
