"""The store: transactions over the database, returning domain objects.

Every mutation goes through :meth:`Store.write`, the one place where changes are committed.
It records the request id (AIP-155) with a fingerprint of the request it came with, runs the
registered mutation hooks inside the same transaction (the audit trail hooks in here) whenever
anything changed, and translates database errors at the boundary.

A request id seen before replays the stored result only for the same request (same method,
caller and arguments); a different request under the same id is refused with
``REQUEST_ID_REUSED``, so that a reused id can neither skip a change nor hide one; one whose
resource was deleted since, and another created under its name, is NOT_FOUND (see
:mod:`controlplane.store.replay`). A request
id is reserved before it is looked up, so that a retry racing the original (a client that gave
up waiting) waits for it to commit and then replays its answer: on PostgreSQL by a
transaction-scoped advisory lock on the id, on SQLite by the write lock that every write
transaction takes up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import structlog
from sqlalchemy import BigInteger, bindparam, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from controlplane.store.convert import utc
from controlplane.store.direct import Direct
from controlplane.store.engine import (
    DEADLINE_MARGIN_S,
    LOCK_TIMEOUT_MS,
    Engines,
    call_time_left,
    create_engines,
    database_lost,
    limit_transaction,
    normalize_url,
)
from controlplane.store.migrate import upgrade
from controlplane.store.replay import check_replayed
from controlplane.store.repos import (
    AliasRepo,
    BlobRepo,
    ModelRepo,
    OperationRepo,
    VersionRepo,
    is_unique_violation,
)
from controlplane.store.tables import RequestIdRow
from modelplane.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from modelplane.server.context import RequestContext

log = structlog.get_logger("modelplane.controlplane")

#: A request id: a UUID, or any id of ASCII letters, digits and dashes up to 64 long.
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
#: The metadata of a refused request id: the request field that holds it.
_REQUEST_ID_FIELD = {"field": "request_id"}

_REQUEST_IDS = RequestIdRow.__table__  # type: ignore[attr-defined]
_SELECT_REQUEST_ID = Direct(
    select(
        _REQUEST_IDS.c.method,
        _REQUEST_IDS.c.resource,
        _REQUEST_IDS.c.request_sha256,
    ).where(_REQUEST_IDS.c.request_id == bindparam("request_id"))
)
_INSERT_REQUEST_ID = Direct(insert(_REQUEST_IDS))
#: Held until the transaction ends. A statement of its own: under READ COMMITTED the lookup that
#: follows takes its snapshot after the lock is granted, so it sees the holder's commit.
_LOCK_REQUEST_ID = Direct(
    text("SELECT pg_advisory_xact_lock(:key)").bindparams(bindparam("key", type_=BigInteger))
)


def request_lock_key(request_id: str) -> int:
    """The 64-bit advisory lock key of ``request_id`` on PostgreSQL (two ids that share a key
    only wait for each other)."""
    digest = hashlib.sha256(b"modelplane/request_id/" + request_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class Mutation:
    """One change made in a write transaction, as the audit trail will see it."""

    action: str
    resource: str
    actor: str
    request_id: str
    before: Any
    after: Any


#: Called inside the write transaction, before commit, with the session and the mutations.
MutationHook = Callable[[Session, list[Mutation]], None]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be part of a request fingerprint")


def request_fingerprint(method: str, principal: str, request: Any) -> str:
    """SHA-256 of what makes a request the same request: the method, the caller and the
    arguments (``request``, JSON-like values and dataclasses). An ``etag`` among them is left
    out: it is a precondition, not part of the change, and a retry that read the resource
    again after the first try landed (the CLI merging drift thresholds does) carries the etag
    that try left, yet asks for the same change."""
    if isinstance(request, Mapping) and "etag" in request:
        request = {k: v for k, v in request.items() if k != "etag"}
    body = json.dumps(
        {"method": method, "principal": principal, "request": request},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_jsonable,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class Tx:
    """A read transaction with one repository per resource."""

    def __init__(self, session: Session, approval_key: Any = None) -> None:
        self.session = session
        #: The server's signing key (:class:`controlplane.audit.SigningKeys`, None when the
        #: store was opened without one): what a gate check verifies approvals with.
        self.approval_key = approval_key
        self.models = ModelRepo(session)
        self.versions = VersionRepo(session)
        self.aliases = AliasRepo(session)
        self.blobs = BlobRepo(session)
        self.operations = OperationRepo(session)


@dataclass
class WriteTx(Tx):
    """A write transaction. ``replay`` is set when the same request (same request id, method,
    caller and arguments) was completed before: it names the resource that request produced,
    and ``replay_time`` is when. A replaying service answers from them and changes nothing."""

    session: Session  # type: ignore[misc]
    ctx: RequestContext
    method: str
    request_id: str
    now: datetime
    replay: str | None = None
    replay_time: datetime | None = None
    mutations: list[Mutation] = field(default_factory=list)
    resource: str = ""
    approval_key: Any = None

    def __post_init__(self) -> None:
        Tx.__init__(self, self.session, self.approval_key)

    def restamp(self, not_before: datetime | None = None) -> datetime:
        """Take the transaction's time (``now``) again, at least ``not_before``, and return it.

        ``now`` is read when the transaction starts; a write that then waits for a row lock
        commits after writes stamped later. One whose records are ordered by time (alias
        history) calls this once it holds the lock, so its time follows theirs.
        """
        now = datetime.now(UTC)
        if not_before is not None:
            now = max(now, not_before)
        self.now = max(self.now, now)
        return self.now

    def record(self, action: str, resource: str, before: Any, after: Any) -> None:
        """Note a change for the mutation hooks; the last resource is what a replay returns."""
        self.mutations.append(
            Mutation(action, resource, self.ctx.principal, self.request_id, before, after)
        )
        self.resource = resource


class Store:
    """Transactions over the control-plane database. Open with :meth:`open`."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.hooks: list[MutationHook] = []
        #: Set by the server once its signing key is loaded; each transaction carries it.
        self.approval_key: Any = None
        database = engines.write.url.database if engines.dialect == "sqlite" else None
        self._sqlite_path = database or None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` and, unless told otherwise, apply pending migrations.

        INVALID_ARGUMENT (INVALID_DB_URL) for a URL :func:`check_db_url` refuses; UNAVAILABLE
        (DATABASE_UNAVAILABLE) when the database cannot be reached to migrate it;
        FAILED_PRECONDITION (SCHEMA_TOO_NEW) when a newer release migrated it, and
        (MIGRATION_FAILED) when the database refuses a migration (tables it did not expect)."""
        check_db_url(url)
        engines = create_engines(url)
        if migrate:
            try:
                upgrade(engines)
            except FailedPrecondition:  # SCHEMA_TOO_NEW
                engines.dispose()
                raise
            except DBAPIError as exc:
                if isinstance(exc, OperationalError) and not _refused_statement(exc):
                    engines.dispose()
                    detail = str(exc.orig or exc).strip().splitlines()[0]
                    raise Unavailable(
                        f"cannot reach the database: {detail}", reason="DATABASE_UNAVAILABLE"
                    ) from exc
                # The database refused a migration's statement: tables it did not expect
                # (another application's, or changed by hand). Nothing was half-applied on
                # PostgreSQL (one transaction); the error says what to look at.
                engines.dispose()
                detail = str(exc.orig or exc).strip().splitlines()[0]
                raise FailedPrecondition(
                    f"migrating the database schema failed: {detail}. The database must be "
                    "empty or Modelplane's own: check that no other application uses it and "
                    "that its tables were not changed by hand; `modelplane controlplane db "
                    "current` says which revision it records (one whose alembic_version table "
                    "was lost while its tables are whole can be marked with `db stamp REV`)",
                    reason="MIGRATION_FAILED",
                ) from exc
        try:
            with _translated(engines.write.url.database):
                engines.watch_file()
        except BaseException:
            engines.dispose()
            raise
        return cls(engines)

    def close(self) -> None:
        self.engines.dispose()

    def on_database_lost(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once when the SQLite database file is found deleted or replaced under
        the running server (from then on writes are refused); never on PostgreSQL."""
        if self.engines.file is not None:
            self.engines.file.on_lost.append(hook)

    def _time_left(self) -> float | None:
        """On PostgreSQL, the time left to the call being served when that is shorter than the
        database's own lock wait limit, so that the transaction must be limited to it
        (:func:`limit_transaction`); else None."""
        if self.engines.dialect != "postgresql":
            return None
        left = call_time_left()
        return left if left is not None and left < LOCK_TIMEOUT_MS / 1000 else None

    @property
    def dialect(self) -> str:
        return self.engines.dialect

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only transaction.

        On PostgreSQL reads run in autocommit mode, but those of a call with less time left
        than the lock wait limit run in a transaction limited to that time: a read stuck
        behind a table lock gives its connection back when its caller gives up."""
        if self.engines.file is not None:
            # Refused as writes are: a connection opened now would create an empty database
            # at the path, and older ones read a file that is gone at the next start.
            self.engines.file.check()
        left = self._time_left()
        engine = self.engines.read if left is None else self.engines.write
        with (
            _translated(self._sqlite_path),
            Session(engine, expire_on_commit=False) as session,
        ):
            if left is not None:
                limit_transaction(session.connection(), left)
            yield Tx(session, self.approval_key)
            session.rollback()

    @contextmanager
    def write(
        self, ctx: RequestContext, method: str, request_id: str = "", *, request: Any = None
    ) -> Iterator[WriteTx]:
        """A write transaction, committed when the block ends without an error.

        ``request`` is what the caller asked for (the arguments that, with ``method`` and the
        caller, make two requests the same); a ``request_id`` seen before with a different
        fingerprint is refused with INVALID_ARGUMENT (``REQUEST_ID_REUSED``).

        A write whose call's deadline has passed is rolled back rather than committed
        (UNAVAILABLE, ``DATABASE_UNAVAILABLE``): its caller was told it failed. On PostgreSQL
        its statements wait for locks no longer than that deadline (see :meth:`read`).
        """
        if request_id and not _REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument(
                "request_id must be a UUID (at most 64 letters, digits and '-')",
                reason="INVALID_REQUEST_ID",
                metadata=_REQUEST_ID_FIELD,
            )
        with (
            _translated(self._sqlite_path),
            self.engines.write_gate(),
            Session(self.engines.write, expire_on_commit=False) as session,
        ):
            left = self._time_left()
            if left is not None:
                limit_transaction(session.connection(), left)
            tx = WriteTx(
                session, ctx, method, request_id, datetime.now(UTC), approval_key=self.approval_key
            )
            fingerprint = ""
            if request_id:
                fingerprint = request_fingerprint(method, ctx.principal, request)
                # Direct statements: these run on every write, and the ORM's identity map and
                # unit of work cost more CPU than the round trip itself.
                if self.dialect == "postgresql":
                    # A concurrent request under this id (a retry racing the original) waits
                    # here until that one commits or rolls back, then replays or proceeds.
                    _LOCK_REQUEST_ID.rows(
                        session.connection(), {"key": request_lock_key(request_id)}
                    )
                seen = _SELECT_REQUEST_ID.first(session.connection(), {"request_id": request_id})
                if seen is not None:
                    seen_method, seen_resource, seen_fingerprint = seen
                    if seen_method != method:
                        raise InvalidArgument(
                            f"request_id {request_id} was already used for {seen_method}; "
                            "send a new request id with each new request",
                            reason="REQUEST_ID_REUSED",
                            metadata=_REQUEST_ID_FIELD,
                        )
                    # Rows written before fingerprints were kept have none: replay those.
                    if seen_fingerprint and seen_fingerprint != fingerprint:
                        raise InvalidArgument(
                            f"request_id {request_id} was already used for a different "
                            f"{method} request (other arguments or another caller); send a new "
                            "request id with each new request",
                            reason="REQUEST_ID_REUSED",
                            metadata=_REQUEST_ID_FIELD,
                        )
                    tx.replay = seen_resource
                    tx.replay_time = _request_time(session, request_id)
                    check_replayed(session, method, request_id, seen_resource, tx.replay_time)
            yield tx
            if tx.mutations:
                # Every change is audited, a replay's included: nothing writes around the trail.
                for hook in self.hooks:
                    hook(session, tx.mutations)
                if request_id and tx.replay is None:
                    _INSERT_REQUEST_ID.rows(
                        session.connection(),
                        {
                            "request_id": request_id,
                            "method": method,
                            "resource": tx.resource,
                            "principal": ctx.principal,
                            "request_sha256": fingerprint,
                            "create_time": tx.now,
                        },
                    )
            left = call_time_left()
            if left is not None and left < DEADLINE_MARGIN_S:
                log.warning("a write was rolled back: its call's deadline passed", method=method)
                raise Unavailable(
                    "the call's deadline passed before its change was committed; nothing was "
                    "stored: retry with more time",
                    reason="DATABASE_UNAVAILABLE",
                )
            session.commit()


def check_db_url(url: str) -> None:
    """Refuse (INVALID_ARGUMENT, reason INVALID_DB_URL) a database URL of no supported kind
    or one that does not parse (a port that is not a number, say); connects to nothing."""
    normalized = normalize_url(url)
    try:
        parsed = make_url(normalized)
    except (ArgumentError, ValueError) as exc:
        raise InvalidArgument(
            f"cannot parse the database URL: {exc}", reason="INVALID_DB_URL"
        ) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each pooled connection would open a database of its own, empty: the migrated one
        # is not the one the next request reads.
        raise InvalidArgument(
            "an in-memory SQLite database cannot hold the control plane's state: give a file, "
            "sqlite:///PATH",
            reason="INVALID_DB_URL",
        )
    if parsed.get_backend_name() == "sqlite" and (
        str(parsed.database).startswith("file:") or "uri" in parsed.query
    ):
        # The server keeps files beside the database (PATH.write-lock, PATH.migrate-lock) and
        # watches PATH itself: it needs the plain path, not an SQLite URI.
        raise InvalidArgument(
            f"SQLite URI filenames ({parsed.database!r}) are not supported: give the file's "
            "path, sqlite:///PATH",
            reason="INVALID_DB_URL",
        )


def _request_time(session: Session, request_id: str) -> datetime | None:
    # Through the ORM, which reads timestamps back as datetimes (Direct rows are raw values);
    # only replays pay for it.
    row = session.get(RequestIdRow, request_id)
    return utc(row.create_time) if row is not None else None


@contextmanager
def _translated(sqlite_path: str | None = None) -> Iterator[None]:
    """Database errors as the service's: a duplicate key (ALREADY_EXISTS), a missing referent
    (NOT_FOUND), another constraint or a trigger that refused the write (INTERNAL,
    DATABASE_CONSTRAINT), no room (RESOURCE_EXHAUSTED, STORAGE_FULL), a database that does not
    answer or a lock that does not come (UNAVAILABLE, DATABASE_UNAVAILABLE). ``sqlite_path``
    is the SQLite file, whose size is looked at when SQLite reports a failed write (see
    :func:`_no_room`)."""
    try:
        yield
    except IntegrityError as exc:
        if _is_foreign_key_violation(exc):
            raise NotFound(
                "a resource this request refers to no longer exists (a concurrent request "
                "deleted it); check that it exists and retry",
                reason="REFERENCED_RESOURCE_NOT_FOUND",
            ) from exc
        if is_unique_violation(exc):
            raise AlreadyExists(
                "the resource already exists (a concurrent request created it)",
                reason="ALREADY_EXISTS",
            ) from exc
        raise _constraint_failed(exc) from exc
    except (OperationalError, PoolTimeout) as exc:
        refused = _refused_file(exc, sqlite_path)
        if refused is not None:
            log.error("database error", error=_cause(exc), reason=refused.reason)
            raise refused from exc
        # A pool with no free connection for its timeout is as busy as a lock that does not
        # come: both are retryable, not the server's bug. The client is told no more than
        # that; the database's own words go to the log.
        full = _no_room(exc, sqlite_path)
        log.warning("database error", error=_cause(exc), storage_full=full)
        if full:
            raise _storage_full() from exc
        raise Unavailable(
            "the database is unavailable or busy; retry shortly", reason="DATABASE_UNAVAILABLE"
        ) from exc
    except DataError as exc:
        # A NUL in text that no check caught (PostgreSQL cannot store one): the request's
        # fault, said without echoing the value. Other data errors (an overflow, a value too
        # long for its column) may come from what the server computed: they stay INTERNAL.
        if "NUL" not in str(exc.orig):
            raise
        raise InvalidArgument(
            "the database cannot store a NUL character in text; remove it and retry",
            reason="UNSTORABLE_VALUE",
        ) from exc
    except DBAPIError as exc:
        if _constraint_kind(exc) is not None:
            # A PL/pgSQL RAISE (in a trigger) is no IntegrityError to the driver.
            raise _constraint_failed(exc) from exc
        # PostgreSQL reports a file it cannot extend past a size limit as an internal error.
        if not _no_room(exc, sqlite_path):
            raise
        log.warning("database error", error=_cause(exc), storage_full=True)
        raise _storage_full() from exc


#: What refused a write, by SQLite's extended result code or PostgreSQL's SQLSTATE: the
#: constraints other than keys (a duplicate key is ALREADY_EXISTS, a missing referent
#: NOT_FOUND) and a trigger's RAISE.
_CONSTRAINT_KINDS = {
    "SQLITE_CONSTRAINT_CHECK": "a CHECK constraint",
    "SQLITE_CONSTRAINT_NOTNULL": "a NOT NULL constraint",
    "SQLITE_CONSTRAINT_TRIGGER": "a trigger",
    "SQLITE_CONSTRAINT_FUNCTION": "a function",
    "SQLITE_CONSTRAINT_DATATYPE": "a column's type (STRICT table)",
    "23502": "a NOT NULL constraint",
    "23514": "a CHECK constraint",
    "23P01": "an exclusion constraint",
    "P0001": "a trigger",
}


def _constraint_kind(exc: DBAPIError) -> str | None:
    """What in the database refused the write (see :data:`_CONSTRAINT_KINDS`): None when
    nothing of the kind did; ``a constraint`` for another integrity error."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None) or ""
    if code in _CONSTRAINT_KINDS:
        return _CONSTRAINT_KINDS[code]
    if isinstance(exc, IntegrityError) or code.startswith("23"):
        return "a constraint"
    return None


def _constraint_failed(exc: DBAPIError) -> Internal:
    """The error for a write the database refused by a rule of its own (a CHECK or NOT NULL
    constraint, a trigger): not the caller's doing, nor a race, so INTERNAL
    (DATABASE_CONSTRAINT). The database's message goes to the log only: it may quote values
    or the schema."""
    kind = _constraint_kind(exc) or "a constraint"
    log.error("the database refused a write", error=_cause(exc), refused_by=kind)
    return Internal(
        f"the database refused the change ({kind} of the database failed); nothing was "
        "stored. The server log has the database's message",
        reason="DATABASE_CONSTRAINT",
    )


def _storage_full() -> ResourceExhausted:
    return ResourceExhausted(
        "the database has no room for this change (its disk, or the size its files may "
        "reach, is full); nothing was stored: retry once an operator has freed space",
        reason="STORAGE_FULL",
    )


def _refused_file(exc: Exception, sqlite_path: str | None) -> FailedPrecondition | None:
    """What a SQLite file the server may not write (read-only, its permissions refusing the
    server's user) or that was moved away answers: FAILED_PRECONDITION, which no retry will
    change (``DATABASE_READ_ONLY``, ``DATABASE_GONE``); None for any other error.

    SQLITE_CANTOPEN also comes from a process out of file descriptors, which may pass: it
    counts only when the file is missing or its permissions refuse this process."""
    name = getattr(getattr(exc, "orig", None), "sqlite_errorname", "") or ""
    if name == "SQLITE_READONLY_DBMOVED":
        return database_lost("DATABASE_GONE")
    if name == "SQLITE_CANTOPEN" and sqlite_path:
        if not os.path.exists(sqlite_path):
            return database_lost("DATABASE_GONE")
        folder = os.path.dirname(os.path.abspath(sqlite_path))
        if os.access(sqlite_path, os.R_OK | os.W_OK) and os.access(folder, os.W_OK | os.X_OK):
            return None
    elif not (name.startswith("SQLITE_READONLY") or name == "SQLITE_PERM"):
        return None
    return FailedPrecondition(
        "the database cannot be written: its file (or its folder, or its -wal or -shm file) "
        "is read-only or its permissions refuse the server's user; nothing was stored. An "
        "operator must make it writable for the server and restart it",
        reason="DATABASE_READ_ONLY",
    )


def _cause(exc: Exception) -> str:
    """The database's own first line about ``exc``, with its error code where it gives one."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    text = lines[0] if lines else type(orig).__name__
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return f"{text} ({code})" if code else text


#: PostgreSQL's disk_full, and the words of an OS error that says a file cannot grow.
_PG_DISK_FULL = "53100"
_NO_ROOM_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")
#: SQLite's codes for a write, a truncation or a shared-memory file that failed in the OS.
_SQLITE_WRITE_ERRORS = ("SQLITE_IOERR_WRITE", "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR_SHMSIZE")
#: How close to a limit a file must be for a failed write to be taken as having hit it.
_LIMIT_MARGIN_BYTES = 1 << 20


def _no_room(exc: Exception, sqlite_path: str | None) -> bool:
    """Whether ``exc`` says the database's storage is full.

    SQLite says so (SQLITE_FULL, "database or disk is full") only for ENOSPC; a write refused
    for another want of room (EFBIG past the process's file size limit) is a bare "disk I/O
    error", the same as a failing disk, so it counts as no room only when one of the
    database's files has reached that limit or its file system has no free space left."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
        return True
    name = getattr(orig, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return True
    if name in _SQLITE_WRITE_ERRORS and sqlite_path:
        return _sqlite_files_at_limit(sqlite_path)
    return not name and any(word in str(orig) for word in _NO_ROOM_WORDS)


def _sqlite_files_at_limit(path: str) -> bool:
    """Whether the SQLite database at ``path`` (with its ``-wal`` and ``-shm`` files) is at
    this process's file size limit, or its file system has (almost) no free space."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    try:
        if limit != resource.RLIM_INFINITY:
            for name in (path, f"{path}-wal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(name).st_size + _LIMIT_MARGIN_BYTES > limit:
                        return True
        fs = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < _LIMIT_MARGIN_BYTES


def _refused_statement(exc: OperationalError) -> bool:
    """Whether SQLite refused a statement itself (``SQLITE_ERROR``: a table that already
    exists, a missing column), which it reports as an OperationalError like a file it cannot
    open or a lock it cannot take."""
    return getattr(exc.orig, "sqlite_errorname", "") == "SQLITE_ERROR"


def _is_foreign_key_violation(exc: IntegrityError) -> bool:
    """Whether ``exc`` refuses a row that refers to a missing one (rather than a duplicate)."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23503":  # psycopg: foreign_key_violation
        return True
    return getattr(orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY" or (
        "FOREIGN KEY constraint failed" in str(orig)
    )
