"""Apply, look at and undo Alembic migrations, safely when several replicas start at once.

PostgreSQL: a session-level advisory lock serialises the replicas. SQLite (one host only): an
exclusive lock on a file beside the database does. ``modelplane controlplane db`` runs
:func:`upgrade`, :func:`downgrade` and :func:`stamp` under the same locks as the start-up
migration.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from controlplane.store.engine import Engines, create_engines, normalize_url
from modelplane.errors import FailedPrecondition, InvalidArgument, Unavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Arbitrary 64-bit key of the migration advisory lock.
ADVISORY_LOCK_KEY = 0x6D6F64656C706C6E
#: Tables whose rows show that a database holds a registry (every change adds an audit event).
_DATA_TABLES = ("models", "blobs", "audit_events")


def alembic_config() -> Config:
    """The Alembic configuration pointing at our migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this release knows."""
    return str(_script().get_current_head())


@dataclass(frozen=True)
class Migration:
    """One revision of the schema: its id, the one it follows ("" for the first) and what it
    changes (the first line of its docstring)."""

    revision: str
    down_revision: str
    description: str


def history() -> list[Migration]:
    """This release's revisions, oldest first."""
    out = []
    for s in _script().walk_revisions():
        down = s.down_revision
        first = (s.doc or "").strip().splitlines()
        out.append(
            Migration(
                s.revision,
                down if isinstance(down, str) else ",".join(down or ()),
                first[0] if first else "",
            )
        )
    return out[::-1]


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this release's migrations."""

    #: The database's revision; "" when it has none (empty, or its ``alembic_version`` lost).
    revision: str
    #: This release's newest revision.
    head: str
    #: Whether this release knows ``revision`` (False: a newer release migrated it).
    known: bool
    #: The revisions an upgrade would apply, oldest first.
    pending: tuple[str, ...]


def status(engines: Engines) -> SchemaStatus:
    """Where the schema of the database ``engines`` reach stands; reads only."""
    script = _script()
    newest = str(script.get_current_head())
    with database_errors("reading the schema's revision"), engines.read.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    revision = ",".join(heads)
    known_revisions = {s.revision for s in script.walk_revisions()}
    known = all(rev in known_revisions for rev in heads)
    pending: tuple[str, ...] = ()
    if known:
        steps = script.iterate_revisions(newest, heads[0] if heads else None)
        pending = tuple(s.revision for s in steps)[::-1]
    return SchemaStatus(revision, newest, known, pending)


@contextmanager
def _sqlite_lock(engines: Engines) -> Iterator[None]:
    database = make_url(str(engines.write.url)).database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _locked(engines: Engines) -> Iterator[Connection]:
    """A write connection holding the migration lock (the SQLite lock file, or PostgreSQL's
    advisory lock), so that one process at a time changes the schema."""
    if engines.dialect == "sqlite":
        with _sqlite_lock(engines), engines.write.connect() as conn:
            yield conn
        return
    with engines.write.connect() as conn:
        # Serving connections give up on a lock after a while (see create_engines); a
        # migration waits for the other replicas' migration and for its tables instead.
        serving_timeout = conn.execute(text("SHOW lock_timeout")).scalar()
        conn.execute(text("SET lock_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()  # a failed migration's transaction, if any
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            # Back to the pool as it came (RESET would drop the timeout set on connect).
            conn.execute(
                text("SELECT set_config('lock_timeout', :v, false)"), {"v": serving_timeout}
            )
            conn.commit()


def upgrade(engines: Engines, revision: str = "head") -> None:
    """Bring the schema to ``revision``.

    FAILED_PRECONDITION (SCHEMA_TOO_NEW) when the database is at a revision this release does
    not know: a newer release migrated it (an image rolled back after a newer replica
    started), and this one can neither upgrade it nor serve it safely."""
    _migrate(engines, command.upgrade, revision)


def downgrade(engines: Engines, revision: str) -> None:
    """Take the schema back to ``revision`` (an id, ``-N`` for N steps, or ``base``), running
    each later revision's ``downgrade()``: the tables and columns they added go, with their
    data.

    FAILED_PRECONDITION (SCHEMA_TOO_NEW) as :func:`upgrade`; INVALID_ARGUMENT
    (UNKNOWN_REVISION) for a revision this release does not know or one above the database's.
    Database errors are translated by the caller (see :func:`database_errors`)."""
    _migrate(engines, command.downgrade, revision)


def _migrate(engines: Engines, run: Callable[[Config, str], None], revision: str) -> None:
    """Run Alembic's ``run`` (its upgrade or downgrade command) to ``revision`` under the
    migration lock, refusing a database at a revision this release does not know."""
    cfg = alembic_config()
    with _locked(engines) as conn:
        _refuse_unknown_revision(conn, cfg)
        cfg.attributes["connection"] = conn
        with _revision_errors(revision):
            run(cfg, revision)
        conn.commit()


def stamp(engines: Engines, revision: str) -> None:
    """Record ``revision`` as the schema's revision without running any migration: for a
    database whose ``alembic_version`` was lost or emptied while its tables are those of
    ``revision``. Whatever revision it recorded before is replaced, one this release does not
    know included.

    INVALID_ARGUMENT (UNKNOWN_REVISION) for a revision this release does not know."""
    cfg = alembic_config()
    with _revision_errors(revision):
        # Resolved first: Alembic empties alembic_version (and commits) before it resolves.
        ScriptDirectory.from_config(cfg).get_revisions(revision)
    with _locked(engines) as conn:
        cfg.attributes["connection"] = conn
        with _revision_errors(revision):
            command.stamp(cfg, revision, purge=True)
        conn.commit()


@contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """Alembic's refusal of a revision (unknown, or not reachable that way) as
    INVALID_ARGUMENT (UNKNOWN_REVISION)."""
    try:
        yield
    except CommandError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(
            f"revision {revision!r} cannot be used: {detail}; `modelplane controlplane db "
            "history` lists this release's revisions and `db current` the database's",
            reason="UNKNOWN_REVISION",
            metadata={"revision": revision},
        ) from None


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """A database that cannot be reached as UNAVAILABLE (DATABASE_UNAVAILABLE); a statement it
    refuses while ``action`` runs as FAILED_PRECONDITION (MIGRATION_FAILED)."""
    try:
        yield
    except DBAPIError as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0]
        # SQLite reports a statement it refuses (SQLITE_ERROR) as an OperationalError too.
        refused = getattr(exc.orig, "sqlite_errorname", "") == "SQLITE_ERROR"
        if isinstance(exc, OperationalError) and not refused:
            raise Unavailable(
                f"cannot reach the database: {detail}", reason="DATABASE_UNAVAILABLE"
            ) from exc
        raise FailedPrecondition(
            f"{action} failed: {detail}. The database must be empty or Modelplane's own: "
            "check that no other application uses it and that its tables were not changed "
            "by hand",
            reason="MIGRATION_FAILED",
        ) from exc


def _refuse_unknown_revision(conn: Connection, cfg: Config) -> None:
    """Raise SCHEMA_TOO_NEW when the database's revision is not one of our migrations."""
    current = MigrationContext.configure(conn).get_current_heads()
    conn.commit()  # end the read, so that the upgrade starts a transaction of its own
    script = ScriptDirectory.from_config(cfg)
    known = {s.revision for s in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        newest = script.get_current_head() or "none"
        raise FailedPrecondition(
            f"the database's schema is at revision {', '.join(unknown)}, which this release "
            f"does not know (its newest is {newest}): a newer release migrated it; run a "
            "release that knows it",
            reason="SCHEMA_TOO_NEW",
            metadata={"revision": ",".join(unknown), "head": newest},
        )


@dataclass(frozen=True)
class Contents:
    """What a database holds, as the server looks before it migrates and serves it."""

    #: Whether it has Modelplane's tables (those of any revision).
    has_tables: bool
    #: Whether any of them holds a row: a model, a blob or an audit event.
    holds_data: bool
    #: The ids of the keys that signed its approvals, with how many each signed.
    approval_keys: dict[str, int]


_NOTHING = Contents(False, False, {})


def contents(url: str) -> Contents:
    """What the database at ``url`` holds, read without changing it: a SQLite file that does
    not exist is not created (it holds nothing). UNAVAILABLE (DATABASE_UNAVAILABLE) when it
    cannot be reached."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database or "")).expanduser()
        if not path.is_file() or path.stat().st_size == 0:
            return _NOTHING
    engines = create_engines(url)
    try:
        with database_errors("reading the database"), engines.read.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            present = [t for t in _DATA_TABLES if t in tables]
            if not present:
                return _NOTHING
            holds_data = any(
                conn.execute(text(f"SELECT 1 FROM {t} LIMIT 1")).first() is not None
                for t in present
            )
            keys: dict[str, int] = {}
            if "approvals" in tables:
                rows = conn.execute(
                    text(
                        "SELECT key_id, COUNT(*) FROM approvals WHERE key_id <> '' "
                        "GROUP BY key_id ORDER BY key_id"
                    )
                )
                keys = {str(kid): int(n) for kid, n in rows}
            return Contents(True, holds_data, keys)
    finally:
        engines.dispose()
