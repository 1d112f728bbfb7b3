"""``modelplane controlplane backup --out``: a folder that cannot take the copy is a usage error
naming ``--out`` and the folder (not a failure of the database), a file that belongs to the
live database is refused, and a backup stopped by SIGTERM leaves no partial copy behind (nor
do the ones killed before it, once another backup runs)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from modelplane.testing.launch import prefix
from modelplane.testing.processes import alive

_TIMEOUT = 120


def _cli(*argv: str, limits: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(limits or []), sys.executable, "-m", "modelplane.cli", "controlplane", "backup", *argv],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Path]:
    """A registry made by the store, held open (as a server holds it: its -wal and -shm
    beside it) while the test runs."""
    from controlplane.store import Store

    db = tmp_path / "live" / "cp.db"
    db.parent.mkdir()
    store = Store.open(f"sqlite:///{db}")
    try:
        yield db
    finally:
        store.close()


def test_an_out_whose_folder_cannot_take_the_copy_is_a_usage_error(
    tmp_path: Path, registry: Path
) -> None:
    url = f"sqlite:///{registry}"
    # A folder that is not there: named, and not created.
    missing = tmp_path / "no-such-folder" / "backup.db"
    result = _cli("--db", url, "--out", str(missing))
    line = _error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert f"--out {missing}" in line and f"{missing.parent} does not exist" in line
    assert str(registry) not in line and "unable to open" not in line
    assert not missing.parent.exists()
    # A directory, --force or not: said so, not "<hidden name>.partial: Is a directory".
    adir = tmp_path / "adir"
    adir.mkdir()
    (adir / "kept").write_text("kept")
    for force in ((), ("--force",)):
        result = _cli("--db", url, "--out", str(adir), *force)
        line = _error_line(result.stderr)
        assert result.returncode == 2, result.stderr
        assert f"--out {adir} is a directory" in line and ".partial" not in line
    assert sorted(p.name for p in adir.iterdir()) == ["kept"]
    # A file where the folder should be.
    afile = tmp_path / "afile"
    afile.write_text("a file")
    result = _cli("--db", url, "--out", str(afile / "backup.db"))
    assert result.returncode == 2 and f"{afile} is not a folder" in _error_line(result.stderr)
    # A copy that outgrows what the folder takes (a file size limit here; a full disk alike):
    # the folder named, the database not blamed, nothing left behind.
    out = tmp_path / "backup.db"
    limit = [*prefix(file_size_limit=registry.stat().st_size // 2)]
    result = _cli("--db", url, "--out", str(out), limits=limit)
    line = _error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert f"--out {out}: writing the copy in its folder {tmp_path} failed" in line
    assert "nothing was written" in line and "backing up" not in line
    assert not out.exists() and _partials(tmp_path) == []
    # Without the limit the same command writes it.
    result = _cli("--db", url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 0
    assert _partials(tmp_path) == []


@contextmanager
def _unwritable(folder: Path) -> Iterator[str]:
    """Make ``folder`` refuse new files; yields the OS's reason. Mode 0o500 for a user; root
    writes whatever the mode, so for root the folder is made immutable (chattr +i), or the
    test skipped where the file system or the capabilities allow no such thing."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield os.strerror(errno.EACCES)
        finally:
            folder.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    made = chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True)
    if not made or made.returncode != 0:
        pytest.skip("root writes in a folder whatever its mode, and chattr +i is refused here")
    try:
        yield os.strerror(errno.EPERM)
    finally:
        subprocess.run([str(chattr), "-i", str(folder)], check=True)


def test_an_out_in_a_folder_that_refuses_new_files_is_a_usage_error(
    tmp_path: Path, registry: Path
) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    out = folder / "backup.db"
    with _unwritable(folder) as reason:
        result = _cli("--db", f"sqlite:///{registry}", "--out", str(out))
    line = _error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert f"--out {out}: cannot create a file in its folder {folder}: {reason}" in line
    assert "backing up" not in line and str(registry) not in line
    assert list(folder.iterdir()) == []


def test_an_out_naming_a_file_of_the_live_database_is_refused(registry: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".write-lock", ".migrate-lock"):
        own = Path(f"{registry}{suffix}")
        before = own.read_bytes() if own.exists() else None
        result = _cli("--db", f"sqlite:///{registry}", "--out", str(own), "--force")
        line = _error_line(result.stderr)
        assert result.returncode == 2, result.stderr
        assert f"--out {own} is the database" in line and "name another file" in line
        assert (own.read_bytes() if own.exists() else None) == before
    # Named through another path to the same file.
    wal = Path(f"{registry}-wal")
    assert wal.stat().st_size > 0  # the premise: the live -wal holds commits
    before = wal.read_bytes()
    named = registry.parent / ".." / registry.parent.name / wal.name
    result = _cli("--db", f"sqlite:///{registry}", "--out", str(named), "--force")
    assert result.returncode == 2 and f"--out {named} is the database's -wal file" in (
        _error_line(result.stderr)
    )
    assert wal.read_bytes() == before
    assert _partials(registry.parent) == []
    with closing(sqlite3.connect(registry)) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=_TIMEOUT)
    assert not alive(child.pid)
    return child.pid


def test_a_backup_stopped_by_sigterm_leaves_no_partial_copy(tmp_path: Path, registry: Path) -> None:
    # A registry big enough that the copy takes a moment.
    with closing(sqlite3.connect(registry)) as conn:
        conn.execute("CREATE TABLE filler (b BLOB)")
        conn.executemany("INSERT INTO filler VALUES (randomblob(1000000))", [()] * 96)
        conn.commit()
    folder = tmp_path / "backups"
    folder.mkdir()
    out = folder / "backup.db"
    out.write_text("an earlier backup")
    cli = [sys.executable, "-m", "modelplane.cli", "controlplane", "backup"]
    proc = subprocess.Popen(
        [*cli, "--db", f"sqlite:///{registry}", "--out", str(out), "--force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + _TIMEOUT
        while not _partials(folder):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    line = _error_line(stderr)
    assert "stopped by SIGTERM" in line and f"nothing was written to {out}" in line
    assert "Traceback" not in stderr
    assert _partials(folder) == [] and out.read_text() == "an earlier backup"

    # Partial copies a killed backup left (SIGKILL cannot be caught) are removed by the next
    # backup to the same file; those of a backup still running, or of another file, are kept.
    dead, running = _dead_pid(), os.getpid()
    left = [f".backup.db.{dead}.partial", f".backup.db.{dead}.partial-journal"]
    kept = [f".backup.db.{running}.partial", f".other.db.{dead}.partial"]
    for name in (*left, *kept):
        (folder / name).write_text("partial")
    result = _cli("--db", f"sqlite:///{registry}", "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert _partials(folder) == sorted(kept)
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM filler").fetchone()[0] == 96
