"""``modelplane controlplane backup``: a consistent copy of a SQLite database taken while
the server runs (SQLite's online backup API), written beside ``--out`` and moved into place
whole; a PostgreSQL URL is pointed to pg_dump."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from modelplane.cli._dburl import DB_HELP, db_url, shown, sqlite_path
from modelplane.cli._output import EXIT_CHECK_FAILED, EXIT_USAGE, CliError, Printer


def register(s: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``backup`` under ``modelplane controlplane``."""
    backup = s.add_parser(
        "backup",
        help="copy a SQLite database consistently, also while the server runs",
        description="Copies the database with SQLite's online backup API: a consistent copy "
        "while the server runs, which copying the file does not make (its latest changes are "
        "in the -wal file beside it). The copy holds neither the artifact root nor the "
        "signing key: back them up too. A PostgreSQL database is backed up with pg_dump -Fc.",
    )
    backup.add_argument("--db", help=DB_HELP)
    backup.add_argument("--out", required=True, metavar="FILE", help="the copy to write")
    backup.add_argument("--force", action="store_true", help="replace FILE when it exists")
    backup.set_defaults(handler=_backup)


#: The exit code of a backup stopped by SIGTERM: 128 + 15, as a shell reports it (and as 130
#: is Ctrl-C's).
EXIT_TERMINATED = 143

#: The files SQLite and the servers keep beside a database: replacing one of them with a copy
#: breaks the live database (its -wal holds its latest commits).
_COMPANIONS = ("-wal", "-shm", "-journal", ".write-lock", ".migrate-lock")

#: What SQLite adds to the temporary copy's name for its own files beside it.
_PARTIAL_SUFFIXES = ("", "-journal", "-wal", "-shm")

#: SQLite result codes that mean the copy could not be written (its folder's side, not the
#: database's): full, read-only, cannot open, and the I/O errors of writing.
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN = 13, 8, 14
_SQLITE_IOERR_WRITES = {
    778,  # SQLITE_IOERR_WRITE
    1034,  # SQLITE_IOERR_FSYNC
    1290,  # SQLITE_IOERR_DIR_FSYNC
    1546,  # SQLITE_IOERR_TRUNCATE
    2570,  # SQLITE_IOERR_DELETE
    3338,  # SQLITE_IOERR_ACCESS
}


class _Terminated(BaseException):
    """SIGTERM while backing up: unwinds like Ctrl-C's KeyboardInterrupt, so that the partial
    copy is removed (a BaseException, so that no ``except Exception`` on the way stops it)."""


def _backup(args: argparse.Namespace, out: Printer) -> int:
    url = db_url(args)
    target = Path(args.out).expanduser()
    source = sqlite_path(url)
    if source is None:
        raise CliError(
            "a PostgreSQL database is backed up with PostgreSQL's own tools, consistently "
            f"while the servers run: pg_dump -Fc -f {shlex.quote(str(target))} "
            f"{shlex.quote(shown(url))} (its password from PGPASSWORD or ~/.pgpass), and "
            "restored into an empty database, the servers stopped, with pg_restore --no-owner "
            f"-d DATABASE_URL {shlex.quote(str(target))}. Back up the artifact root and the "
            "signing key with it",
            EXIT_USAGE,
            reason="USE_PG_DUMP",
        )
    if not source.is_file():
        raise CliError(f"there is no database file at {source}: check --db", EXIT_USAGE)
    _check_target(target, source, force=args.force)
    _remove_stale_partials(target)
    tmp = target.parent / f".{target.name}.{os.getpid()}.partial"
    placed = False
    try:
        with _sigterm_raises():
            try:
                _create_partial(tmp, target)
                summary = _copy_sqlite(source, tmp, target)
                with _stop_signals_blocked():  # the copy is in place, or not at all
                    _put_in_place(tmp, target, replace=args.force)
                    placed = True
            finally:
                _remove_partial(tmp)
    except _Terminated:
        done = (
            f"the copy was written to {target} in full"
            if placed
            else f"nothing was written to {target}"
        )
        raise CliError(f"stopped by SIGTERM: {done}", EXIT_TERMINATED) from None
    summary = {"database": url, "out": str(target), "bytes": target.stat().st_size, **summary}
    if out.json_output:
        out.emit(summary)
    else:
        out.emit(
            f"backed up {source} to {target}: {summary['bytes']} bytes, schema revision "
            f"{summary['revision'] or 'none'}, {summary['models']} models, "
            f"{summary['versions']} versions, {summary['audit_events']} audit events"
        )
    out.progress(
        "The copy holds neither the artifact root nor the signing key "
        "(ARTIFACT_ROOT/keys/signing-key.pem or --signing-key): back them up now, after this "
        "copy (a root copied before it can miss blobs the copy names). To "
        "restore, stop the server, remove the database's -wal and -shm files, then copy this "
        "file in its place."
    )
    return 0


def _check_target(target: Path, source: Path, *, force: bool) -> None:
    """Refuse an ``--out`` that is the database or one of the files beside it, a directory, a
    file in a folder that is not there, an existing file without ``force``, or a folder with
    less room than the database takes: all before anything is written."""
    resolved = target.resolve()
    for base in {source, source.resolve()}:
        for suffix in ("", *_COMPANIONS):
            own = Path(f"{base}{suffix}")
            same = resolved == own.resolve()
            if not same and target.exists() and own.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(target, own)
            if same:
                what = "the database itself" if not suffix else f"the database's {suffix} file"
                raise CliError(
                    f"--out {target} is {what} ({source}{suffix}): replacing it would break "
                    "the live database; name another file",
                    EXIT_USAGE,
                )
    if target.is_dir():
        raise CliError(
            f"--out {target} is a directory: name a file, {target / 'controlplane.db'} say",
            EXIT_USAGE,
        )
    folder = target.parent
    if not folder.exists():
        raise CliError(
            f"--out {target}: its folder {_folder(target)} does not exist: create it first",
            EXIT_USAGE,
        )
    if not folder.is_dir():
        raise CliError(f"--out {target}: {_folder(target)} is not a folder", EXIT_USAGE)
    if target.exists() and not force:
        raise CliError(f"{target} exists: pass --force to replace it", EXIT_USAGE)
    try:
        fs = os.statvfs(folder)
    except OSError:
        return  # no figure to go by: the copy finds out
    free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
    size = source.stat().st_size
    if free < size:
        raise CliError(
            f"--out {target}: its folder {_folder(target)} has {free} bytes free, the database is "
            f"{size} bytes: {os.strerror(errno.ENOSPC)}; nothing was written",
            EXIT_USAGE,
        )


def _folder(target: Path) -> str:
    """``target``'s folder, absolute (``.`` says little in an error)."""
    return os.path.abspath(target.parent)


def _target_error(target: Path, what: str) -> CliError:
    """A failure of writing ``--out`` (its folder's side): a usage error, not a failed check."""
    return CliError(f"--out {target}: {what}; nothing was written", EXIT_USAGE)


def _create_partial(tmp: Path, target: Path) -> None:
    """Create the temporary copy's (empty) file: the folder's own refusal (no permission, a
    read-only or full file system) named as such, before SQLite opens it."""
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise _target_error(
            target, f"cannot create a file in its folder {_folder(target)}: {exc.strerror}"
        ) from None


def _remove_partial(tmp: Path) -> None:
    """Remove the temporary copy and what SQLite keeps beside it."""
    for suffix in _PARTIAL_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp}{suffix}").unlink()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (through /proc; without it, as
    alive: nothing is removed then)."""
    if not os.path.isdir("/proc"):
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
    except (OSError, IndexError):
        return True


def _remove_stale_partials(target: Path) -> None:
    """Remove the temporary copies (``.NAME.PID.partial`` and SQLite's files beside them) that
    earlier backups to ``target`` left when they were killed: those whose process is gone
    (or is this one, by a reused pid)."""
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid, dot, rest = name[len(prefix) :].partition(".")
        if not (dot and pid.isdigit() and rest in {f"partial{s}" for s in _PARTIAL_SUFFIXES}):
            continue
        if int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            (target.parent / name).unlink()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While backing up, SIGTERM raises :class:`_Terminated` where the process would have
    died of it, so that the partial copy is removed as it is on Ctrl-C. A SIGTERM ignored (or
    handled by a caller) stays so."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block is done (then they act at once), so that the
    step in it is done in full or not begun."""
    if not _in_main_thread():
        yield
        return
    stops = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _copy_sqlite(source: Path, tmp: Path, target: Path) -> dict[str, Any]:
    """Copy ``source`` into ``tmp`` with the online backup API, in one step: one read
    transaction, so the copy is the database as one commit left it, whatever the server
    writes meanwhile. The copy is left in rollback-journal mode, one self-contained file.
    A failure to write the copy (``--out``'s folder full, say) is told from one of the
    database."""
    try:
        src = sqlite3.connect(str(source), timeout=30)
    except sqlite3.Error as exc:
        raise CliError(f"cannot open the database {source}: {exc}", EXIT_USAGE) from None
    try:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "models" not in tables:
            raise CliError(
                f"{source} holds no Modelplane registry (no models table): check --db; nothing "
                "was written",
                EXIT_USAGE,
            )
        dst = sqlite3.connect(str(tmp))
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            checked = dst.execute("PRAGMA quick_check").fetchone()[0]
            if checked != "ok":
                raise CliError(
                    f"the copy of {source} fails SQLite's integrity check ({checked}); "
                    "nothing was written",
                    EXIT_CHECK_FAILED,
                )
            summary = _summary(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        if _writing_failed(exc):
            raise _target_error(
                target,
                f"writing the copy in its folder {_folder(target)} failed: {exc} "
                f"({_sqlite_name(exc)}): check the free space there and the file size limit "
                "(ulimit -f)",
            ) from None
        raise CliError(f"backing up {source} failed: {exc}", EXIT_CHECK_FAILED) from None
    finally:
        src.close()
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        raise _target_error(
            target, f"writing the copy in its folder {_folder(target)} failed: {exc.strerror}"
        ) from None
    return summary


def _writing_failed(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error is one of writing (the copy's side: the database is only read)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return False
    return code & 0xFF in (_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN) or (
        code in _SQLITE_IOERR_WRITES
    )


def _sqlite_name(exc: sqlite3.Error) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "SQLite error")


def _summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """The copy's revision and how many models, versions and audit events it holds."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def count(table: str) -> int:
        return (
            int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            if table in tables
            else 0
        )

    revision = ""
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = str(row[0]) if row else ""
    return {
        "revision": revision,
        "models": count("models"),
        "versions": count("model_versions"),
        "audit_events": count("audit_events"),
    }


def _put_in_place(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move the finished copy to ``target`` at once: replacing a file there with ``replace``,
    else only when there is none (a file made there meanwhile is kept)."""
    try:
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    except FileExistsError:
        raise CliError(f"{target} exists: pass --force to replace it", EXIT_USAGE) from None
    except IsADirectoryError:
        raise CliError(f"--out {target} is a directory: name a file", EXIT_USAGE) from None
    except OSError as exc:
        raise _target_error(
            target, f"cannot put the copy in place in its folder {_folder(target)}: {exc.strerror}"
        ) from None
    try:
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CliError(
            f"--out {target}: the copy is in place, but syncing its folder {_folder(target)} "
            f"failed: {exc.strerror}; it may not survive a crash",
            EXIT_USAGE,
        ) from None
