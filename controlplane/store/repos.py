"""Repositories: the SQL behind each resource, returning domain objects."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    String,
    TypeDecorator,
    and_,
    bindparam,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    union_all,
    update,
)
from sqlalchemy import (
    select as core_select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.domain import Alias, AliasEvent, Blob, Model, ModelVersion, Operation
from controlplane.store import convert
from controlplane.store.deployment_tables import DeploymentRow
from controlplane.store.direct import Direct
from controlplane.store.pagination import malformed_token
from controlplane.store.tables import (
    AliasEventRow,
    AliasRow,
    AuditEventRow,
    BlobRow,
    EvaluationRow,
    ModelRow,
    ModelVersionRow,
    OperationRow,
)
from modelplane.errors import Aborted, AlreadyExists

T = TypeVar("T")

# Core tables for the statements on the register path: they skip the ORM's identity map and
# unit of work, which cost more CPU per statement than the database does.
_MODELS = ModelRow.__table__  # type: ignore[attr-defined]
_VERSIONS = ModelVersionRow.__table__  # type: ignore[attr-defined]
_BLOBS = BlobRow.__table__  # type: ignore[attr-defined]
# Statement objects built once, parameters passed at execution: their compiled forms are cached.
#: The columns a new version's INSERT sets (all but the generated id).
_VERSION_COLUMNS = [c for c in _VERSIONS.columns if c.name != "id"]
#: Parameters named ``v_<column>``, as in :func:`_numbered_insert_pg`.
_INSERT_VERSION = Direct(
    insert(_VERSIONS)
    .values({c.name: bindparam(f"v_{c.name}", type_=c.type) for c in _VERSION_COLUMNS})
    .returning(_VERSIONS.c.id)
)


def _insert_version(conn: Any, values: Mapping[str, Any]) -> int:
    """Insert a version from its column values; returns the generated id."""
    inserted = _INSERT_VERSION.first(conn, {f"v_{k}": v for k, v in values.items()})
    assert inserted is not None  # INSERT ... RETURNING always returns the row
    return int(inserted[0])


def _numbered_insert_pg() -> Any:
    """PostgreSQL: reserve the next version number and insert the version in one statement.

    The UPDATE locks the model row until commit and moves its revision and update time (the
    version's), as :meth:`ModelRepo.next_version` does; when the model does not exist it
    returns no row and nothing is inserted. Parameters are named ``v_<column>``: names of the
    models table's columns would be taken as more of its SET.
    """
    number = (
        update(_MODELS)
        .where(_MODELS.c.id == bindparam("v_model_id"))
        .values(
            latest_version=_MODELS.c.latest_version + 1,
            revision=_MODELS.c.revision + 1,
            update_time=bindparam("v_update_time", type_=_MODELS.c.update_time.type),
        )
        .returning(_MODELS.c.latest_version)
        .cte("reserved")
    )
    values = [
        number.c.latest_version if c.name == "version" else bindparam(f"v_{c.name}", type_=c.type)
        for c in _VERSION_COLUMNS
    ]
    return (
        insert(_VERSIONS)
        .from_select(_VERSION_COLUMNS, core_select(*values).select_from(number))
        .returning(_VERSIONS.c.id, _VERSIONS.c.version)
    )


_INSERT_NUMBERED_VERSION_PG = Direct(_numbered_insert_pg())
_SELECT_BLOB = core_select(_BLOBS).where(_BLOBS.c.sha256 == bindparam("sha256"))
_SELECT_MODEL_AND_BLOBS = Direct(
    union_all(
        core_select(literal("m").label("kind"), _MODELS.c.id.label("key")).where(
            _MODELS.c.id == bindparam("model_id")
        ),
        core_select(literal("b"), _BLOBS.c.sha256).where(
            _BLOBS.c.sha256.in_(bindparam("digests", expanding=True))
        ),
    )
)
_INSERT_NEW_BLOB_PG = Direct(
    postgresql.insert(_BLOBS)
    .on_conflict_do_nothing(index_elements=[_BLOBS.c.sha256])
    .returning(_BLOBS.c.sha256)
)
_INSERT_NEW_BLOB_SQLITE = Direct(
    sqlite.insert(_BLOBS)
    .on_conflict_do_nothing(index_elements=[_BLOBS.c.sha256])
    .returning(_BLOBS.c.sha256)
)


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether ``exc`` refuses a row whose key another row already has."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23505":  # psycopg: unique_violation
        return True
    return getattr(orig, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_PRIMARYKEY",
        "SQLITE_CONSTRAINT_UNIQUE",
    ) or "UNIQUE constraint failed" in str(orig)


def stale_etag(name: str) -> Aborted:
    """The error for a stale etag or a lost race between two updates."""
    return Aborted(
        f"{name} was changed by someone else (etag mismatch); read it again and retry",
        reason="ETAG_MISMATCH",
    )


def _keyset(columns: list[Any], key: list[Any], desc: bool) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in (columns...) order."""
    clauses = []
    for i, column in enumerate(columns):
        head = [columns[j] == key[j] for j in range(i)]
        step = column < key[i] if desc else column > key[i]
        clauses.append(and_(*head, step))
    return or_(*clauses)


def _kind(column: Any) -> type:
    """The Python type of a key column's values: ``int``, ``str`` or ``datetime``."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # sqlmodel's AutoString wraps String
        sql_type = sql_type.impl_instance
    for sql_kind, kind in ((DateTime, datetime), (Integer, int), (String, str)):
        if isinstance(sql_type, sql_kind):
            return kind
    raise TypeError(f"no page-token kind for column {column} of type {sql_type}")


#: The range of a 32-bit SQL INTEGER column (a PostgreSQL ``integer``): a larger value bound
#: against one fails the statement ("integer out of range") instead of comparing.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _int32(column: Any) -> bool:
    """Whether ``column`` holds 32-bit integers (INTEGER, not BIGINT)."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    return isinstance(sql_type, Integer) and not isinstance(sql_type, BigInteger)


def _resume_key(columns: list[Any], after: list[Any]) -> list[Any]:
    """``after`` as values of ``columns``, or INVALID_PAGE_TOKEN when it cannot be one.

    A page token is not signed, so its key may be hand-made: it must hold one value per column,
    of that column's kind (a time as ISO 8601 text, an integer within the column's range),
    before it reaches SQL.
    """
    if len(after) != len(columns):
        raise malformed_token()
    key: list[Any] = []
    for column, value in zip(columns, after, strict=True):
        kind = _kind(column)
        if kind is datetime and isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise malformed_token() from None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise malformed_token()
        if isinstance(value, int) and _int32(column) and not INT32_MIN <= value <= INT32_MAX:
            raise malformed_token()
        key.append(value)
    return key


def _scan(
    session: Session,
    query: Any,
    columns: list[Any],
    key_of: Callable[[Any], list[Any]],
    after: list[Any] | None,
    desc: bool,
    limit: int,
    keep: Callable[[Any], bool],
) -> tuple[list[Any], list[Any] | None]:
    """Rows in key order after ``after`` that ``keep`` accepts: up to ``limit``, and the key to
    resume from when more may follow.

    ``after`` comes from a page token and the key returned goes into one, both as ``key_of``
    writes them (a time as ISO 8601 text). Between chunks the scan resumes from the last row's
    own column values, which compare with the columns as they are stored.
    """
    order = [c.desc() if desc else c.asc() for c in columns]
    found: list[Any] = []
    cursor = _resume_key(columns, after) if after is not None else None
    chunk = max(limit * 2, 64)
    while True:
        q = query.order_by(*order).limit(chunk)
        if cursor is not None:
            q = q.where(_keyset(columns, cursor, desc))
        rows = list(session.exec(q))
        for row in rows:
            cursor = [getattr(row, c.key) for c in columns]
            if keep(row):
                found.append(row)
                if len(found) == limit + 1:
                    return found[:limit], key_of(found[limit - 1])
        if len(rows) < chunk:
            return found, None


def scan_by_id(
    session: Session, query: Any, id_column: Any, after: list[Any] | None, limit: int, desc: bool
) -> tuple[list[Any], list[Any] | None]:
    """:func:`_scan` of every row of ``query`` in the order of its unique ``id_column``."""
    return _scan(
        session, query, [id_column], lambda r: [getattr(r, id_column.key)], after, desc, limit, _all
    )


def scan_newest(
    session: Session, query: Any, row_type: Any, after: list[Any] | None, limit: int
) -> tuple[list[Any], list[Any] | None]:
    """:func:`_scan` of every row of ``query`` newest first, by ``create_time`` then ``id`` (a
    row recorded between two pages shifts no other)."""
    columns = [col(row_type.create_time), col(row_type.id)]
    return _scan(
        session,
        query,
        columns,
        lambda r: [convert.utc(r.create_time).isoformat(), r.id],
        after,
        True,
        limit,
        _all,
    )


def _all(row: Any) -> bool:
    return True


def about_models(column: Any, models: Collection[str]) -> ColumnElement[bool]:
    """Rows whose resource name in ``column`` is about one of ``models``: ``models/{id}`` and
    what lies under it (``models/{id}/versions/3``, ``models/{id}@production``), as
    :func:`controlplane.auth.policy.model_of` reads a name; none for no models."""
    terms: list[ColumnElement[bool]] = []
    for model in sorted(models):
        name = f"models/{model}"
        terms.append(column == name)
        terms.append(column.startswith(name + "/", autoescape=True))
        terms.append(column.startswith(name + "@", autoescape=True))
    return _any(terms) if terms else false()


def at_or_under(column: Any, name: str, *, postgres: bool) -> ColumnElement[bool]:
    """Rows whose resource name in ``column`` is ``name`` or lies under it (``models/m1`` and
    ``models/m1/versions/3``, not ``models/m10``). The prefix is a range of ``name + "/"`` up
    to ``name + "0"`` ('0' follows '/') compared byte by byte, so it is as case-sensitive as
    ``=`` on both backends (SQLite's LIKE is not), needs no escaping of LIKE's wildcards, and
    on SQLite is answered from the column's index. PostgreSQL compares in the "C" collation,
    since another one may order punctuation apart from its bytes."""
    ordered = column.collate("C") if postgres else column
    return or_(column == name, and_(ordered >= name + "/", ordered < name + "0"))


#: Terms one OR joins flat (see :func:`_any`).
_OR_FANOUT = 64


def _any(terms: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """``terms`` joined by OR as a tree of groups at most :data:`_OR_FANOUT` wide: SQLite
    parses a chain of n ORs as an expression n deep and refuses one deeper than 1,000 (a token
    scoped to a few hundred models). SQLAlchemy flattens ORs nested in ORs, parenthesised or
    not, so each group is a ``CASE WHEN group THEN 1 END = 1``, which it keeps."""
    if len(terms) <= _OR_FANOUT:
        return or_(*terms)
    step = -(-len(terms) // _OR_FANOUT)
    groups = [terms[i : i + step] for i in range(0, len(terms), step)]
    return or_(*(case((_any(g), 1)) == 1 for g in groups))


class ModelRepo:
    """Models."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def row(self, model_id: str, *, for_update: bool = False) -> ModelRow | None:
        """The model's row; with ``for_update``, locked until commit and read afresh (not the
        copy this session may hold from before the lock)."""
        q = select(ModelRow).where(ModelRow.id == model_id)
        if for_update:
            q = q.with_for_update().execution_options(populate_existing=True)
        return self.s.exec(q).first()

    def get(self, model_id: str) -> Model | None:
        row = self.row(model_id)
        return convert.model(row) if row else None

    def exists(self, model_id: str) -> bool:
        """Whether ``models/{model_id}`` exists (one indexed lookup, no object loaded)."""
        q = select(_MODELS.c.id).where(_MODELS.c.id == model_id)
        return self.s.connection().execute(q).first() is not None

    def add(self, row: ModelRow) -> Model:
        """Insert the model; ALREADY_EXISTS (MODEL_EXISTS) when its id is taken, including by
        a concurrent create that committed after this transaction looked (on PostgreSQL the
        insert then waits for that one and fails on the primary key)."""
        self.s.add(row)
        try:
            self.s.flush()
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            raise AlreadyExists(
                f"model models/{row.id} already exists", reason="MODEL_EXISTS"
            ) from exc
        return convert.model(row)

    def page(
        self,
        labels: dict[str, str],
        order: str,
        desc: bool,
        after: list[Any] | None,
        limit: int,
        models: Collection[str] | None = None,
    ) -> tuple[list[Model], list[Any] | None]:
        """Models with ``labels``, in ``order`` after ``after``; with ``models``, only those
        (a caller whose roles hold on some models): its page holds them alone and its key is
        one of theirs."""
        columns: list[Any] = [col(ModelRow.id)]
        if order != "name":
            columns.insert(0, getattr(ModelRow, order))

        def key_of(r: ModelRow) -> list[Any]:
            return [convert.utc(getattr(r, order)).isoformat(), r.id] if order != "name" else [r.id]

        def keep(r: ModelRow) -> bool:
            return all(r.labels.get(k) == v for k, v in labels.items())

        q = select(ModelRow)
        if models is not None:
            q = q.where(col(ModelRow.id).in_(sorted(models)))
        rows, next_key = _scan(self.s, q, columns, key_of, after, desc, limit, keep)
        return [convert.model(r) for r in rows], next_key

    def update(self, model_id: str, if_etag: str, changes: dict[str, Any], now: datetime) -> Model:
        """Apply ``changes`` when the stored etag matches ``if_etag`` (any, when empty).

        Without an etag the row is locked first, so that a concurrent update cannot slip in
        between the read and the compare-and-set and make a blind update fail.
        """
        current = self.row(model_id, for_update=not if_etag)
        assert current is not None
        name = f"models/{model_id}"
        if if_etag and convert.etag(name, current.revision, current.create_time) != if_etag:
            raise stale_etag(name)
        result = self.s.exec(  # type: ignore[call-overload]
            update(ModelRow)
            .where(col(ModelRow.id) == model_id, col(ModelRow.revision) == current.revision)
            .values(**changes, update_time=now, revision=current.revision + 1)
        )
        if result.rowcount != 1:
            raise stale_etag(name)
        self.s.expire_all()
        row = self.row(model_id)
        assert row is not None
        return convert.model(row)

    def next_version(self, model_id: str, now: datetime | None = None) -> int | None:
        """Reserve the next version number (locks the model row until commit); None when the
        model does not exist. The model changes (its latest version), so its revision moves
        and its update time becomes ``now`` (the current time when None)."""
        result = self.s.connection().execute(
            update(_MODELS)
            .where(_MODELS.c.id == model_id)
            .values(
                latest_version=_MODELS.c.latest_version + 1,
                revision=_MODELS.c.revision + 1,
                update_time=now or datetime.now(UTC),
            )
            .returning(_MODELS.c.latest_version)
        )
        number = result.scalar()
        return None if number is None else int(number)

    def delete(self, model_id: str) -> None:
        self.s.exec(delete(ModelRow).where(col(ModelRow.id) == model_id))  # type: ignore[call-overload]


class VersionRepo:
    """Model versions."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def _aliases(self, model_id: str, versions: Iterable[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        wanted = list(versions)
        if not wanted:
            return out
        q = select(AliasRow).where(AliasRow.model_id == model_id, col(AliasRow.version).in_(wanted))
        for a in self.s.exec(q):
            out.setdefault(a.version, []).append(a.alias)
        return out

    def row(
        self, model_id: str, version: int, *, for_update: bool = False
    ) -> ModelVersionRow | None:
        """The version's row; with ``for_update``, locked until commit and read afresh."""
        q = select(ModelVersionRow).where(
            ModelVersionRow.model_id == model_id, ModelVersionRow.version == version
        )
        if for_update:
            q = q.with_for_update().execution_options(populate_existing=True)
        return self.s.exec(q).first()

    def get(self, model_id: str, version: int) -> ModelVersion | None:
        row = self.row(model_id, version)
        if row is None:
            return None
        return convert.version(row, self._aliases(model_id, [version]).get(version, []))

    def add(self, row: ModelVersionRow) -> ModelVersion:
        """Insert a new version (one Core INSERT ... RETURNING id; ``row`` stays detached)."""
        values = {c.name: getattr(row, c.name) for c in _VERSION_COLUMNS}
        row.id = _insert_version(self.s.connection(), values)
        return convert.version(row, [])

    def add_numbered(self, model_id: str, values: dict[str, Any]) -> ModelVersion | None:
        """Reserve the model's next version number and insert a version with it; None (and
        nothing inserted) when the model does not exist.

        ``values`` holds every column but ``id``, ``model_id``, ``version`` and ``revision``.
        One statement on PostgreSQL; :meth:`ModelRepo.next_version` then an INSERT on SQLite.
        Either way the model row stays locked until commit, so numbers are never reused.
        """
        row = {**values, "model_id": model_id, "revision": 1}
        conn = self.s.connection()
        if conn.dialect.name == "postgresql":
            got = _INSERT_NUMBERED_VERSION_PG.first(conn, {f"v_{k}": v for k, v in row.items()})
            if got is None:
                return None
            row["id"], row["version"] = int(got[0]), int(got[1])
        else:
            number = ModelRepo(self.s).next_version(model_id, row["update_time"])
            if number is None:
                return None
            row["version"] = number
            row["id"] = _insert_version(conn, row)
        return convert.version(SimpleNamespace(**row), [])

    def count(self, model_id: str) -> int:
        q = (
            select(func.count())
            .select_from(ModelVersionRow)
            .where(ModelVersionRow.model_id == model_id)
        )
        return int(self.s.exec(q).one())

    def page(
        self,
        model_id: str,
        labels: dict[str, str],
        states: set[str],
        desc: bool,
        after: list[Any] | None,
        limit: int,
    ) -> tuple[list[ModelVersion], list[Any] | None]:
        def keep(r: ModelVersionRow) -> bool:
            if states and r.state not in states:
                return False
            return all(r.labels.get(k) == v for k, v in labels.items())

        rows, next_key = _scan(
            self.s,
            select(ModelVersionRow).where(ModelVersionRow.model_id == model_id),
            [col(ModelVersionRow.version)],
            lambda r: [r.version],
            after,
            desc,
            limit,
            keep,
        )
        aliases = self._aliases(model_id, [r.version for r in rows])
        return [convert.version(r, aliases.get(r.version, [])) for r in rows], next_key

    def update(
        self, model_id: str, version: int, if_etag: str, changes: dict[str, Any], now: datetime
    ) -> ModelVersion:
        """Apply ``changes`` when the stored etag matches ``if_etag`` (any, when empty).

        Without an etag the row is locked first, as in :meth:`ModelRepo.update`.
        """
        current = self.row(model_id, version, for_update=not if_etag)
        assert current is not None
        name = f"models/{model_id}/versions/{version}"
        if if_etag and convert.etag(name, current.revision, current.create_time) != if_etag:
            raise stale_etag(name)
        result = self.s.exec(  # type: ignore[call-overload]
            update(ModelVersionRow)
            .where(
                col(ModelVersionRow.id) == current.id,
                col(ModelVersionRow.revision) == current.revision,
            )
            .values(**changes, update_time=now, revision=current.revision + 1)
        )
        if result.rowcount != 1:
            raise stale_etag(name)
        self.s.expire_all()
        got = self.get(model_id, version)
        assert got is not None
        return got

    def delete_all(self, model_id: str) -> None:
        self.s.exec(  # type: ignore[call-overload]
            delete(ModelVersionRow).where(col(ModelVersionRow.model_id) == model_id)
        )


class AliasRepo:
    """Aliases and their history."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, model_id: str, alias: str) -> Alias | None:
        row = self.s.get(AliasRow, (model_id, alias))
        return convert.alias(row) if row else None

    def all(self, model_id: str) -> list[Alias]:
        q = select(AliasRow).where(AliasRow.model_id == model_id).order_by(col(AliasRow.alias))
        return [convert.alias(r) for r in self.s.exec(q)]

    def for_version(self, model_id: str, version: int) -> list[str]:
        q = select(AliasRow.alias).where(AliasRow.model_id == model_id, AliasRow.version == version)
        return list(self.s.exec(q))

    def set(
        self, model_id: str, alias: str, version: int, actor: str, reason: str, now: datetime
    ) -> tuple[Alias, int | None]:
        """Point ``alias`` at ``version``; returns the alias and the version it pointed to."""
        row = self.s.get(AliasRow, (model_id, alias), with_for_update=True)
        previous = row.version if row else None
        if row is None:
            row = AliasRow(model_id=model_id, alias=alias, version=version, update_time=now)
        row.version, row.updated_by, row.reason, row.update_time = version, actor, reason, now
        self.s.add(row)
        self._event(model_id, alias, version, previous, actor, reason, now)
        if previous != version:
            self._touch(model_id, [version] if previous is None else [version, previous], now)
        return convert.alias(row), previous

    def delete(self, model_id: str, alias: str, actor: str, reason: str, now: datetime) -> int:
        """Remove ``alias``; returns the version it pointed to."""
        row = self.s.get(AliasRow, (model_id, alias), with_for_update=True)
        assert row is not None
        previous = row.version
        self.s.delete(row)
        self._event(model_id, alias, None, previous, actor, reason, now)
        self._touch(model_id, [previous], now)
        return previous

    def next_event_time(self, model_id: str) -> datetime | None:
        """The earliest time the model's next alias event may carry: just after its last one
        (None when it has none). Events stamped so run in the order of their ids, which is the
        order ``as_of`` reads them in; the caller holds the model's lock."""
        q = select(func.max(AliasEventRow.time)).where(AliasEventRow.model_id == model_id)
        last = self.s.exec(q).one()
        return None if last is None else convert.utc(last) + timedelta(microseconds=1)

    def _touch(self, model_id: str, versions: list[int], now: datetime) -> None:
        """A version lists its aliases: one gained or lost is a change of the version (a new
        revision, so a new etag)."""
        self.s.exec(  # type: ignore[call-overload]
            update(ModelVersionRow)
            .where(
                col(ModelVersionRow.model_id) == model_id,
                col(ModelVersionRow.version).in_(versions),
            )
            .values(revision=ModelVersionRow.revision + 1, update_time=now)
        )

    def _event(
        self,
        model_id: str,
        alias: str,
        version: int | None,
        previous: int | None,
        actor: str,
        reason: str,
        now: datetime,
    ) -> None:
        self.s.add(
            AliasEventRow(
                model_id=model_id,
                alias=alias,
                version=version,
                previous_version=previous,
                actor=actor,
                reason=reason,
                time=now,
            )
        )
        self.s.flush()

    def delete_all(self, model_id: str) -> None:
        """Delete a model's aliases and their history (a model created later under its id
        starts with none; the audit trail keeps the record)."""
        for table in (AliasRow, AliasEventRow):
            self.s.exec(delete(table).where(col(table.model_id) == model_id))  # type: ignore[call-overload]

    def history(
        self, model_id: str, alias: str | None, after: list[Any] | None, limit: int
    ) -> tuple[list[AliasEvent], list[Any] | None]:
        q = select(AliasEventRow).where(AliasEventRow.model_id == model_id)
        if alias is not None:
            q = q.where(AliasEventRow.alias == alias)
        rows, next_key = scan_by_id(self.s, q, col(AliasEventRow.id), after, limit, True)
        return [convert.alias_event(r) for r in rows], next_key

    def as_of(self, model_id: str, alias: str, when: datetime) -> AliasEvent | None:
        """The last move of ``alias`` at or before ``when``."""
        q = (
            select(AliasEventRow)
            .where(
                AliasEventRow.model_id == model_id,
                AliasEventRow.alias == alias,
                col(AliasEventRow.time) <= when,
            )
            .order_by(col(AliasEventRow.id).desc())
            .limit(1)
        )
        row = self.s.exec(q).first()
        return convert.alias_event(row) if row else None

    def deleted_since(self, model_id: str, alias: str, when: datetime) -> bool:
        """Whether ``alias`` was deleted after ``when`` (whatever was set under its name
        afterwards)."""
        q = select(AliasEventRow.id).where(
            AliasEventRow.model_id == model_id,
            AliasEventRow.alias == alias,
            col(AliasEventRow.time) > when,
            col(AliasEventRow.version).is_(None),
        )
        return self.s.exec(q.limit(1)).first() is not None


def _version_digests(artifact: str, lineage: Any, baseline: Any) -> set[str]:
    """The blobs a version's row names in its digest fields."""
    found = {artifact}
    if isinstance(lineage, dict):
        for dataset in lineage.get("datasets", []):
            if isinstance(dataset, dict) and isinstance(dataset.get("sha256"), str):
                found.add(dataset["sha256"])
    if isinstance(baseline, dict) and isinstance(baseline.get("sha256"), str):
        found.add(baseline["sha256"])
    return found


#: Audit actions by which a principal sends a blob's bytes: an upload, or a registration that
#: stores the baseline profile it computed from a dataset the principal named.
_SENDING_ACTIONS = ("UploadBlob", "StoreProfile")
#: Audit actions that create what may use a blob: a version, an evaluation.
_CREATING_ACTIONS = ("CreateModelVersion", "CreateEvaluation")
#: Resource names per query when looking up creation events (well under SQLite's bound
#: parameters).
_NAMES_PER_QUERY = 500


@dataclass(frozen=True)
class Sending:
    """A principal's sending of a blob's bytes: the audit event's sequence number and time
    (``0`` and None when the blob's record names it as first uploader but the trail holds no
    event of it)."""

    seq: int
    time: datetime | None


class BlobRepo:
    """Blob metadata (the bytes live in the blob store)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, sha256: str) -> Blob | None:
        row = self.s.connection().execute(_SELECT_BLOB, {"sha256": sha256}).first()
        return convert.blob(row) if row else None  # type: ignore[arg-type]

    def model_and_blobs(self, model_id: str, digests: list[str]) -> tuple[bool, set[str]]:
        """Whether ``models/{model_id}`` exists, and which of ``digests`` have a blob record:
        one round trip for what registering a version must find first."""
        rows = _SELECT_MODEL_AND_BLOBS.rows(
            self.s.connection(), {"model_id": model_id, "digests": digests}
        )
        found = {(str(kind), str(key)) for kind, key in rows}
        return ("m", model_id) in found, {key for kind, key in found if kind == "b"}

    def uploaded_by(self, sha256: str, principal: str) -> bool:
        """Whether ``principal`` sent the bytes of blob ``sha256``: it stored them first, or
        it uploaded them again afterwards (an ``UploadBlob`` event of its own)."""
        return self.last_sent(sha256, principal) is not None

    def last_sent(self, sha256: str, principal: str) -> Sending | None:
        """``principal``'s latest sending of blob ``sha256``'s bytes as the audit trail holds
        it (its ``UploadBlob`` events, and ``StoreProfile`` for a baseline profile that its
        registration made); ``Sending(0, None)`` when it stored them first but the trail holds
        no such event; None when it never sent them."""
        latest = (
            select(AuditEventRow.seq, AuditEventRow.time)
            .where(
                AuditEventRow.resource == f"blobs/{sha256}",
                AuditEventRow.actor == principal,
                col(AuditEventRow.action).in_(_SENDING_ACTIONS),
            )
            .order_by(col(AuditEventRow.seq).desc())
            .limit(1)
        )
        row = self.s.exec(latest).first()
        if row is not None:
            seq, time = row
            return Sending(int(seq), convert.utc(time) if isinstance(time, datetime) else None)
        first = select(BlobRow.sha256).where(
            BlobRow.sha256 == sha256, BlobRow.created_by == principal
        )
        return Sending(0, None) if self.s.exec(first).first() is not None else None

    def used_in(self, sha256: str, models: Iterable[str]) -> bool:
        """Whether a version of one of ``models`` holds blob ``sha256`` (its artifact, a
        dataset of its lineage, or its baseline profile) or one of their evaluations ran on it.
        Only those digest fields count: a digest written into free text (a lineage parameter,
        a dataset's source) opens nothing."""
        models = set(models)
        return bool(models) and any(self._uses(sha256, models, inside=True))

    def used_elsewhere_since(self, sha256: str, models: Iterable[str], seq: int) -> bool:
        """Whether a version or an evaluation of a model other than ``models`` came to use blob
        ``sha256`` (as :meth:`used_in` counts uses) after audit event ``seq``. One principal
        may hold credentials scoped to different models: such a use after its sending may be
        another credential's, which a credential scoped to ``models`` must not read through."""
        elsewhere = list(self._uses(sha256, set(models), inside=False))
        if not elsewhere:
            return False
        created = self._created_seqs(elsewhere)
        # A use the trail holds no creation event of counts as later (the careful answer).
        return any(created.get(name, seq + 1) > seq for name in elsewhere)

    def _uses(self, sha256: str, models: set[str], *, inside: bool) -> Iterator[str]:
        """The versions and evaluations (by resource name) of ``models`` (``inside``) or of all
        other models (not ``inside``) that use blob ``sha256`` in their digest fields."""
        in_models = col(ModelVersionRow.model_id).in_(models)
        # Narrowed in SQL by the digest's text, then decided on the fields themselves.
        held = core_select(
            col(ModelVersionRow.model_id),
            col(ModelVersionRow.version),
            col(ModelVersionRow.artifact_sha256),
            col(ModelVersionRow.lineage),
            col(ModelVersionRow.baseline),
        ).where(
            in_models if inside else ~in_models,
            or_(
                col(ModelVersionRow.artifact_sha256) == sha256,
                cast(ModelVersionRow.lineage, String).contains(sha256),
                cast(ModelVersionRow.baseline, String).contains(sha256),
            ),
        )
        for model_id, version, artifact, lineage, baseline in self.s.connection().execute(held):
            if sha256 in _version_digests(artifact, lineage, baseline):
                yield f"models/{model_id}/versions/{version}"
        eval_in = col(EvaluationRow.model_id).in_(models)
        evaluated = select(EvaluationRow.model_id, EvaluationRow.version, EvaluationRow.id).where(
            eval_in if inside else ~eval_in, EvaluationRow.dataset_sha256 == sha256
        )
        for model_id, version, evaluation_id in self.s.exec(evaluated):
            yield f"models/{model_id}/versions/{version}/evaluations/{evaluation_id}"

    def _created_seqs(self, names: list[str]) -> dict[str, int]:
        """The audit sequence number of the latest creation event of each of ``names``
        (versions and evaluations): a model deleted and created again may reuse a name."""
        found: dict[str, int] = {}
        for i in range(0, len(names), _NAMES_PER_QUERY):
            q = (
                select(AuditEventRow.resource, func.max(AuditEventRow.seq))
                .where(
                    col(AuditEventRow.resource).in_(names[i : i + _NAMES_PER_QUERY]),
                    col(AuditEventRow.action).in_(_CREATING_ACTIONS),
                )
                .group_by(AuditEventRow.resource)
            )
            found.update((str(name), int(seq)) for name, seq in self.s.exec(q))
        return found

    def served(self, sha256: str) -> bool:
        """Whether blob ``sha256`` is the artifact or the baseline profile of a version of a
        model that some deployment serves: what a sidecar loads (no lineage dataset, no
        evaluation data)."""
        deployed = select(DeploymentRow.model_id)
        held = select(ModelVersionRow.artifact_sha256, ModelVersionRow.baseline).where(
            col(ModelVersionRow.model_id).in_(deployed),
            or_(
                col(ModelVersionRow.artifact_sha256) == sha256,
                cast(ModelVersionRow.baseline, String).contains(sha256),
            ),
        )
        for artifact, baseline in self.s.exec(held):
            if sha256 in _version_digests(artifact, None, baseline):
                return True
        return False

    def add_if_absent(self, blob: Blob) -> bool:
        """Insert ``blob`` unless a row for its digest exists; True when this call inserted it.

        One statement (``INSERT ... ON CONFLICT DO NOTHING RETURNING``) rather than a read
        followed by an insert; a concurrent upload of the same digest waits for the other
        transaction and then inserts nothing.
        """
        conn = self.s.connection()
        values = {
            "sha256": blob.sha256,
            "size_bytes": blob.size_bytes,
            "media_type": blob.media_type,
            "created_by": blob.created_by,
            "create_time": blob.create_time,
        }
        postgres = conn.dialect.name == "postgresql"
        q = _INSERT_NEW_BLOB_PG if postgres else _INSERT_NEW_BLOB_SQLITE
        return q.first(conn, values) is not None

    def add(self, blob: Blob) -> Blob:
        row = BlobRow(
            sha256=blob.sha256,
            size_bytes=blob.size_bytes,
            media_type=blob.media_type,
            created_by=blob.created_by,
            create_time=blob.create_time,
        )
        self.s.add(row)
        self.s.flush()
        return convert.blob(row)


class OperationRepo:
    """Long-running operation records."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, op_id: str) -> Operation | None:
        row = self.s.get(OperationRow, op_id)
        return convert.operation(row) if row else None

    def add(self, row: OperationRow) -> Operation:
        self.s.add(row)
        self.s.flush()
        return convert.operation(row)

    def locked(self, op_id: str) -> OperationRow | None:
        """The operation's row, read afresh and locked until the transaction ends (so that a
        cancel or finish committed meanwhile is seen, not overwritten from a stale copy)."""
        return self.s.get(OperationRow, op_id, with_for_update=True, populate_existing=True)

    def update(self, row: OperationRow, changes: dict[str, Any], now: datetime) -> Operation:
        """Apply ``changes`` to ``row``, which the caller read with :meth:`locked`."""
        for key, value in changes.items():
            setattr(row, key, value)
        row.update_time = now
        row.revision += 1
        self.s.add(row)
        self.s.flush()
        return convert.operation(row)

    def page(
        self,
        target: str,
        after: list[Any] | None,
        limit: int,
        models: Collection[str] | None = None,
    ) -> tuple[list[Operation], list[Any] | None]:
        """Operations about ``target`` (any, when empty): on it or on a resource under it
        (:func:`at_or_under`), newest first; with ``models``, only those whose target is about
        one of them (:func:`about_models`)."""
        q = select(OperationRow)
        if target:
            postgres = self.s.connection().dialect.name == "postgresql"
            q = q.where(at_or_under(col(OperationRow.target), target, postgres=postgres))
        if models is not None:
            q = q.where(about_models(col(OperationRow.target), models))
        rows, next_key = scan_newest(self.s, q, OperationRow, after, limit)
        return [convert.operation(r) for r in rows], next_key
