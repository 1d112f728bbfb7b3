"""``modelplane controlplane backup`` and ``modelplane controlplane db``: a consistent copy of a
SQLite database taken while the server runs, and the schema's migrations run on their own."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelplane.cli._extras import extra
from modelplane.cli._output import (
    EXIT_CHECK_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
)
from modelplane.errors import InvalidArgument, ModelplaneError, Unavailable

if TYPE_CHECKING:
    from controlplane.store.engine import Engines
    from controlplane.store.migrate import SchemaStatus

_DB_HELP = (
    "sqlite:///PATH or postgresql://... (default: MODELPLANE_DB_URL, else "
    "sqlite:///.modelplane/controlplane.db, as serve)"
)


def register(s: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``backup`` and ``db`` under ``modelplane controlplane``."""
    backup = s.add_parser(
        "backup",
        help="copy a SQLite database consistently, also while the server runs",
        description="Copies the database with SQLite's online backup API: a consistent copy "
        "while the server runs, which copying the file does not make (its latest changes are "
        "in the -wal file beside it). The copy holds neither the artifact root nor the "
        "signing key: back them up too. A PostgreSQL database is backed up with pg_dump -Fc.",
    )
    backup.add_argument("--db", help=_DB_HELP)
    backup.add_argument("--out", required=True, metavar="FILE", help="the copy to write")
    backup.add_argument("--force", action="store_true", help="replace FILE when it exists")
    backup.set_defaults(handler=_backup)

    db = s.add_parser(
        "db",
        help="the database schema's migrations: upgrade, current, history, downgrade, stamp",
        description="Runs the schema's migrations on their own (serve applies pending ones "
        "at start), under the lock the servers' start-up migration takes.",
    )
    d = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = d.add_parser("upgrade", help="apply the pending migrations (as serve does at start)")
    up.add_argument("revision", nargs="?", default="head", help="revision (default head)")
    current = d.add_parser("current", help="the database's revision and what is pending")
    d.add_parser("history", help="this release's revisions, oldest first")
    down = d.add_parser(
        "downgrade",
        help="take the schema back to REVISION (before running an older release)",
        description="Runs the downgrade of every revision after REVISION: the tables and "
        "columns they added are dropped with their data. Stop every server on the database "
        "first; a server of this release upgrades it again at start.",
    )
    down.add_argument("revision", help="a revision id, -N for N steps back, or base")
    down.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    stamp = d.add_parser(
        "stamp",
        help="record REVISION as the schema's without migrating (a lost alembic_version)",
    )
    stamp.add_argument("revision", help="a revision id or head")
    for p in (up, current, down, stamp):
        p.add_argument("--db", help=_DB_HELP)
    db.set_defaults(handler=_db)


def _db_url(args: argparse.Namespace) -> str:
    """--db, else MODELPLANE_DB_URL, else the server's default; checked, or exit 2."""
    with extra("controlplane", "the control plane"):
        from controlplane.settings import ControlPlaneSettings
        from controlplane.store import check_db_url
    default = str(ControlPlaneSettings.model_fields["db_url"].default)
    url = getattr(args, "db", None) or os.environ.get("MODELPLANE_DB_URL") or default
    try:
        check_db_url(url)
    except InvalidArgument as exc:
        raise CliError(f"--db: {exc.message}", EXIT_USAGE, reason=exc.reason) from None
    return url


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL."""
    from sqlalchemy.engine import make_url

    from controlplane.store.engine import normalize_url

    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(str(parsed.database)).expanduser()


def _shown(url: str) -> str:
    """The URL without its password (and without the driver name: as libpq takes it)."""
    from sqlalchemy.engine import URL, make_url

    from controlplane.store.engine import normalize_url

    if _sqlite_path(url) is not None:
        return url
    parsed = make_url(normalize_url(url))
    bare = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False)


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """The store's errors as the CLI's: unreachable exits 4, the rest 2."""
    try:
        yield
    except Unavailable as exc:
        raise CliError(exc.message, EXIT_UNREACHABLE, reason=exc.reason) from None
    except ModelplaneError as exc:
        raise CliError(exc.message, EXIT_USAGE, reason=exc.reason) from None


# --- backup -------------------------------------------------------------------------------


def _backup(args: argparse.Namespace, out: Printer) -> int:
    url = _db_url(args)
    target = Path(args.out).expanduser()
    source = _sqlite_path(url)
    if source is None:
        raise CliError(
            "a PostgreSQL database is backed up with PostgreSQL's own tools, consistently "
            f"while the servers run: pg_dump -Fc -f {shlex.quote(str(target))} "
            f"{shlex.quote(_shown(url))} (its password from PGPASSWORD or ~/.pgpass), and "
            "restored into an empty database, the servers stopped, with pg_restore --no-owner "
            f"-d DATABASE_URL {shlex.quote(str(target))}. Back up the artifact root and the "
            "signing key with it",
            EXIT_USAGE,
            reason="USE_PG_DUMP",
        )
    if not source.is_file():
        raise CliError(f"there is no database file at {source}: check --db", EXIT_USAGE)
    if target.exists() and target.resolve() == source.resolve():
        raise CliError(f"--out {target} is the database itself: name another file", EXIT_USAGE)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists: pass --force to replace it", EXIT_USAGE)
    tmp = target.parent / f".{target.name}.{os.getpid()}.partial"
    try:
        summary = _copy_sqlite(source, tmp)
        _put_in_place(tmp, target, replace=args.force)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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
        "(ARTIFACT_ROOT/keys/signing-key.pem or --signing-key): back them up with it. To "
        "restore, stop the server, remove the database's -wal and -shm files, then copy this "
        "file in its place."
    )
    return 0


def _copy_sqlite(source: Path, tmp: Path) -> dict[str, Any]:
    """Copy ``source`` into ``tmp`` with the online backup API, in one step: one read
    transaction, so the copy is the database as one commit left it, whatever the server
    writes meanwhile. The copy is left in rollback-journal mode, one self-contained file."""
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
        raise CliError(f"backing up {source} failed: {exc}", EXIT_CHECK_FAILED) from None
    finally:
        src.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    return summary


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
    if replace:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise CliError(f"{target} exists: pass --force to replace it", EXIT_USAGE) from None
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- db -----------------------------------------------------------------------------------


def _db(args: argparse.Namespace, out: Printer) -> int:
    with extra("controlplane", "the control plane"):
        from controlplane.store import migrate
    if args.db_command == "history":
        return _history(out, migrate.history(), migrate.head())
    url = _db_url(args)
    path = _sqlite_path(url)
    if args.db_command != "upgrade" and path is not None and not path.is_file():
        raise CliError(f"there is no database file at {path}: check --db", EXIT_USAGE)
    from controlplane.store.engine import create_engines

    engines = create_engines(url)
    try:
        with _cli_errors():
            if args.db_command == "current":
                return _current(out, url, engines)
            if args.db_command == "upgrade":
                return _upgrade(out, url, engines, args.revision)
            if args.db_command == "downgrade":
                return _downgrade(out, url, engines, args.revision, args.yes)
            return _stamp(out, url, engines, args.revision)
    finally:
        engines.dispose()


def _history(out: Printer, revisions: list[Any], head: str) -> int:
    rows = [(m.revision, m.down_revision or "-", m.description) for m in revisions]
    out.emit(
        {
            "head": head,
            "revisions": [
                {
                    "revision": m.revision,
                    "down_revision": m.down_revision,
                    "description": m.description,
                }
                for m in revisions
            ],
        },
        columns=["REVISION", "REVISES", "CHANGES"],
        rows=rows,
    )
    return 0


def _current(out: Printer, url: str, engines: Engines) -> int:
    from controlplane.store import migrate

    st = migrate.status(engines)
    has_tables = migrate.contents(url).has_tables if not st.revision else True
    doc = {
        "database": _shown(url),
        "revision": st.revision,
        "head": st.head,
        "known": st.known,
        "pending": list(st.pending),
        "has_tables": has_tables,
    }
    if out.json_output:
        out.emit(doc)
        return 0
    if not st.known:
        text = (
            f"revision {st.revision}, which this release does not know (its newest is "
            f"{st.head}): a newer release migrated it; run a release that knows it, or take "
            "the schema back with that release's `db downgrade`"
        )
    elif not st.revision and has_tables:
        text = (
            "no revision recorded, but the database has Modelplane's tables (its "
            "alembic_version table was lost or emptied): if they are those of this release's "
            f"newest revision, `modelplane controlplane db stamp {st.head}` records it"
        )
    elif not st.revision:
        text = (
            f"no revision: an empty database; `db upgrade` or the server's start creates the "
            f"schema ({len(st.pending)} migrations, to {st.head})"
        )
    elif not st.pending:
        text = f"revision {st.revision}: this release's newest; nothing to migrate"
    else:
        text = (
            f"revision {st.revision}; this release's newest is {st.head}: "
            f"{len(st.pending)} migration{'s' if len(st.pending) != 1 else ''} pending "
            f"({', '.join(st.pending)}); `modelplane controlplane db upgrade` or the server's "
            "start applies them"
        )
    out.emit(text)
    return 0


def _upgrade(out: Printer, url: str, engines: Engines, revision: str) -> int:
    from controlplane.store import migrate

    before = migrate.status(engines)
    with migrate.database_errors("migrating the database schema"):
        migrate.upgrade(engines, revision)
    after = migrate.status(engines)
    applied = [r for r in before.pending if r not in after.pending]
    if applied:
        text = (
            f"upgraded the schema from {before.revision or 'none'} to {after.revision} "
            f"({len(applied)} migration{'s' if len(applied) != 1 else ''}: {', '.join(applied)})"
        )
    else:
        text = f"the schema is at {after.revision} already: nothing to migrate"
    return _changed(out, url, before, after, text, applied=applied)


def _downgrade(out: Printer, url: str, engines: Engines, revision: str, yes: bool) -> int:
    from controlplane.store import migrate

    before = migrate.status(engines)
    if not yes:
        _confirm(
            f"Take the schema of {_shown(url)} from revision {before.revision or 'none'} back "
            f"to {revision}? The tables and columns later revisions added are dropped with "
            "their data; stop every server on it first."
        )
    with migrate.database_errors("downgrading the database schema"):
        migrate.downgrade(engines, revision)
    after = migrate.status(engines)
    return _changed(
        out,
        url,
        before,
        after,
        f"downgraded the schema from {before.revision} to {after.revision or 'none'}: a "
        f"release whose newest revision is {after.revision or 'none'} can serve it; a "
        f"server of this release upgrades it again to {after.head} at start",
    )


def _confirm(question: str) -> None:
    """Ask on the terminal; exit 2 unless the answer is yes (or there is no terminal)."""
    if not sys.stdin.isatty():
        raise CliError(
            "db downgrade drops tables and columns with their data: pass --yes to confirm "
            "(there is no terminal to ask on)",
            EXIT_USAGE,
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not confirmed: nothing was changed", EXIT_USAGE)


def _stamp(out: Printer, url: str, engines: Engines, revision: str) -> int:
    from controlplane.store import migrate

    before = migrate.status(engines)
    with migrate.database_errors("recording the schema's revision"):
        migrate.stamp(engines, revision)
    after = migrate.status(engines)
    return _changed(
        out,
        url,
        before,
        after,
        f"recorded revision {after.revision} as the schema's (it was "
        f"{before.revision or 'none'}); no migration ran",
    )


def _changed(
    out: Printer, url: str, before: SchemaStatus, after: SchemaStatus, text: str, **more: Any
) -> int:
    """Say what a command changed: as JSON, the database, the revisions it went from and to
    and ``more``; else ``text``."""
    if out.json_output:
        out.emit({"database": _shown(url), "from": before.revision, "to": after.revision, **more})
    else:
        out.emit(text)
    return 0
