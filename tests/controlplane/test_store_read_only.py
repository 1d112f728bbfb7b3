"""A SQLite database file the server may not write (mode 444): a write is refused with
FAILED_PRECONDITION (DATABASE_READ_ONLY), which no retry changes, instead of UNAVAILABLE
"retry shortly" forever; reads are still answered."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from controlplane.store import Store
from controlplane.store.store import _translated
from modelplane import Client, FailedPrecondition, ModelplaneError, Unavailable
from modelplane.testing import processes

#: The user the server runs as when the tests run as root, whom file modes do not stop.
NOBODY = 65534


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the server's user can reach: pytest's own are private to the user running the
    tests, and the server runs as ``nobody`` when that is root."""
    path = Path(tempfile.mkdtemp(prefix="modelplane-read-only-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_read_only_database_file_is_a_failed_precondition(folder: Path) -> None:
    db = folder / "cp.db"
    store = Store.open(f"sqlite:///{db}")  # migrated, so the server only reads at start
    store.close()
    launcher: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to run the server as another user")
        (folder / "artifacts").mkdir()
        for path in (folder, *folder.iterdir()):
            os.chown(path, NOBODY, NOBODY)
        launcher = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    db.chmod(0o444)
    server = processes.controlplane(folder, f"sqlite:///{db}", launcher=launcher).start(60)
    try:
        with Client(server.address, principal="alice", retries=3, timeout=20) as c:
            started = time.monotonic()
            with pytest.raises(FailedPrecondition) as refused:
                c.create_model("m")
            assert refused.value.reason == "DATABASE_READ_ONLY"
            assert "read-only" in refused.value.message
            assert time.monotonic() - started < 5, "retried as if it could pass"
            assert list(c.list_models()) == []
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("name", "exists", "expected"),
    [
        ("SQLITE_READONLY", True, "DATABASE_READ_ONLY"),
        ("SQLITE_READONLY_DIRECTORY", True, "DATABASE_READ_ONLY"),
        ("SQLITE_PERM", True, "DATABASE_READ_ONLY"),
        ("SQLITE_READONLY_DBMOVED", True, "DATABASE_GONE"),
        ("SQLITE_CANTOPEN", False, "DATABASE_GONE"),
        # Also what a process out of file descriptors gets: it may pass.
        ("SQLITE_CANTOPEN", True, "DATABASE_UNAVAILABLE"),
        ("SQLITE_BUSY", True, "DATABASE_UNAVAILABLE"),
    ],
)
def test_sqlite_errors_that_no_retry_changes_are_failed_preconditions(
    tmp_path: Path, name: str, exists: bool, expected: str
) -> None:
    db = tmp_path / "cp.db"
    if exists:
        db.touch()
    orig = sqlite3.OperationalError("attempt to write a readonly database")
    orig.sqlite_errorname = name
    with pytest.raises(ModelplaneError) as raised, _translated(str(db)):
        raise OperationalError("INSERT ...", {}, orig)
    assert raised.value.reason == expected
    kind = Unavailable if expected == "DATABASE_UNAVAILABLE" else FailedPrecondition
    assert isinstance(raised.value, kind)
