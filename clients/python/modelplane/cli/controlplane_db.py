"""``modelplane controlplane db``: the schema's migrations run on their own (``upgrade``,
``current``, ``history``, ``downgrade``, ``stamp``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from modelplane.cli._dburl import DB_HELP, db_url, shown, sqlite_path
from modelplane.cli._extras import extra
from modelplane.cli._output import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
)
from modelplane.errors import FailedPrecondition, ModelplaneError, Unavailable

if TYPE_CHECKING:
    from controlplane.store.engine import Engines
    from controlplane.store.migrate import SchemaStatus


def register(s: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``db`` under ``modelplane controlplane``."""
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
        p.add_argument("--db", help=DB_HELP)
    db.set_defaults(handler=_db)


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """The store's errors as the CLI's: unreachable exits 4, the rest 2."""
    try:
        yield
    except Unavailable as exc:
        raise CliError(exc.message, EXIT_UNREACHABLE, reason=exc.reason) from None
    except ModelplaneError as exc:
        raise CliError(exc.message, EXIT_USAGE, reason=exc.reason) from None


# --- db -----------------------------------------------------------------------------------


def _db(args: argparse.Namespace, out: Printer) -> int:
    with extra("controlplane", "the control plane"):
        from controlplane.store import migrate
    if args.db_command == "history":
        return _history(out, migrate.history(), migrate.head())
    url = db_url(args)
    path = sqlite_path(url)
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
        "database": shown(url),
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
    try:
        with migrate.database_errors("migrating the database schema"):
            migrate.upgrade(engines, revision)
    except FailedPrecondition as exc:
        raise _partly_upgraded(exc, before.revision, engines) from None
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


def _partly_upgraded(
    exc: FailedPrecondition, before: str | None, engines: Engines
) -> FailedPrecondition:
    """A failed upgrade's error, saying where the schema stands now: on SQLite the migrations
    before the failing one stay applied (each commits on its own), on PostgreSQL none do."""
    from controlplane.store import migrate

    try:
        now = migrate.status(engines).revision
    except Exception:  # the database gone as well: the first error says enough
        return exc
    if now == before:
        where = f"the schema is still at revision {before or 'none'}"
    else:
        where = (
            f"the migrations before the failing one were applied: the schema is now at "
            f"revision {now or 'none'} (it was at {before or 'none'})"
        )
    return FailedPrecondition(
        f"{exc.message}. {where}. A database marked with `db stamp` at a revision its tables "
        "do not match fails this way too: `db stamp` it at the revision its tables are at",
        reason=exc.reason,
        metadata={**exc.metadata, "revision": now or ""},
    )


def _downgrade(out: Printer, url: str, engines: Engines, revision: str, yes: bool) -> int:
    from controlplane.store import migrate

    before = migrate.status(engines)
    if not yes:
        _confirm(
            f"Take the schema of {shown(url)} from revision {before.revision or 'none'} back "
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
        out.emit({"database": shown(url), "from": before.revision, "to": after.revision, **more})
    else:
        out.emit(text)
    return 0
