"""Appending to the audit chain, inside the write transaction of every mutation.

Appends are serialised so that sequence numbers stay gapless and each ``prev_hash`` is the
hash of the event before it, across threads and across replicas: on PostgreSQL by a
transaction-scoped advisory lock (taken last in the transaction, held until its commit or
rollback, so it never waits in a cycle with row locks); on SQLite by the write lock that every
write transaction takes up front (``BEGIN IMMEDIATE``). The primary key on ``seq`` refuses a
fork should the serialisation ever be bypassed. An event's ``time`` is taken under that lock
(on PostgreSQL by the append function, migration 0010), never earlier than the event before
it, so times follow the sequence and a reader tailing the trail by time misses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, bindparam, func, insert, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col, select

from controlplane.audit._canonical import (
    GENESIS_HASH,
    HASHED_FIELDS,
    canonical_json,
    event_hash,
    object_digest,
    plain,
    utc_text,
)
from controlplane.store import Mutation, Store
from controlplane.store.convert import utc
from controlplane.store.direct import Direct
from controlplane.store.tables import AuditEventRow

#: Arbitrary 64-bit key of the advisory lock that serialises appends on PostgreSQL.
AUDIT_LOCK_KEY = 0x6D70617564697401

#: One statement object, parameters passed at execution, so its compiled form is cached.
_INSERT_EVENT = insert(AuditEventRow.__table__)  # type: ignore[attr-defined]

#: PostgreSQL function (migration 0006) that takes the lock, reads the head, fills in each
#: event's ``prev_hash`` and ``seq``, hashes and inserts: one round trip per write.
_APPEND = Direct(
    text("SELECT modelplane_audit_append(:k, :events)").bindparams(bindparam("events", type_=JSONB))
)


#: The time an event shows when its stored ``time`` is not a timestamp (see
#: :func:`event_from_row`).
UNREADABLE_TIME = datetime(1970, 1, 1, tzinfo=UTC)

#: The text fields of an event (all but ``seq`` and ``time``).
_TEXT_FIELDS = tuple(f for f in (*HASHED_FIELDS, "hash") if f not in ("seq", "time"))

#: The columns of an event as :func:`event_from_row` reads them: ``time`` as stored, so that a
#: value that is not a timestamp reaches it rather than failing the read (SQLite hands back the
#: text it holds; PostgreSQL's column holds timestamps only, handed back as such).
EVENT_COLUMNS = (
    AuditEventRow.seq,
    type_coerce(AuditEventRow.time, String).label("time"),
    *(getattr(AuditEventRow, name) for name in _TEXT_FIELDS),
)


@dataclass(frozen=True)
class AuditEvent:
    """One event of the audit trail.

    ``stored`` holds, by field name, the stored values of the fields that could not be read as
    their type (see :func:`event_from_row`); the hash is computed over them, not over the values
    shown in their place."""

    seq: int
    time: datetime
    actor: str
    action: str
    resource: str
    request_id: str
    before_sha256: str
    after_sha256: str
    prev_hash: str
    hash: str
    stored: dict[str, Any] = field(default_factory=dict, hash=False)

    def hashed_fields(self) -> dict[str, Any]:
        """The fields the hash covers (all but the hash itself), each as stored."""
        fields = {
            "seq": self.seq,
            "time": utc_text(self.time),
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "request_id": self.request_id,
            "before_sha256": self.before_sha256,
            "after_sha256": self.after_sha256,
            "prev_hash": self.prev_hash,
        }
        return {**fields, **{k: v for k, v in self.stored.items() if k != "hash"}}

    def computed_hash(self) -> str:
        """The hash the fields call for; differs from ``hash`` when the event was altered."""
        return event_hash(self.hashed_fields())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (time as ISO 8601 UTC text), each field as stored."""
        return {**self.hashed_fields(), "hash": self.stored.get("hash", self.hash)}


def stored_time(value: Any) -> datetime | None:
    """A stored event ``time`` as a UTC datetime (read as SQLAlchemy reads SQLite's text); None
    when it is not a timestamp."""
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str):
        try:
            return utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def event_from_row(row: Any) -> AuditEvent:
    """The domain event of a stored row, read with :data:`EVENT_COLUMNS`.

    Only an edit of the database by hand stores a value of the wrong type, on SQLite (whose
    columns take a value of any type, and where :func:`chain_condition` keeps rows whose
    ``seq`` is not a whole number out of the chain). Such an event is still read, so that
    verify names it and listing and export show it: a ``time`` that is not a timestamp shows
    as :data:`UNREADABLE_TIME` and a text field that is not text as the text of its value,
    while :attr:`AuditEvent.stored` keeps the values as stored (JSON-ready), which its hash and
    its export use. Its hash then no longer matches (the stored hash was computed over a
    timestamp and text), so verify reports it ``EVENT_ALTERED``.
    """
    stored: dict[str, Any] = {}
    time = stored_time(row.time)
    if time is None:
        stored["time"] = plain(row.time)
        time = UNREADABLE_TIME
    texts: dict[str, str] = {}
    for name in _TEXT_FIELDS:
        value = getattr(row, name)
        if not isinstance(value, str):
            stored[name] = plain(value)
            value = str(stored[name])
        texts[name] = value
    return AuditEvent(seq=int(row.seq), time=time, **texts, stored=stored)


def chain_condition(session: Session) -> ColumnElement[bool]:
    """The condition a row of the chain meets: ``seq`` from 1, and on SQLite (whose columns
    take a value of any type) a whole number; PostgreSQL's column holds whole numbers only."""
    from_one = col(AuditEventRow.seq) >= 1
    if session.get_bind().dialect.name != "sqlite":
        return from_one
    return from_one & (func.typeof(AuditEventRow.seq) == "integer")


def _newest(session: Session) -> tuple[int, str, datetime | None]:
    """The sequence number, hash and time of the newest event of the chain (a row numbered
    below 1, or on SQLite not by a whole number, is none of it; its time None when it is not a
    timestamp); ``(0, GENESIS_HASH, None)`` when there is none."""
    row = session.exec(
        select(AuditEventRow.seq, AuditEventRow.hash, EVENT_COLUMNS[1])
        .where(chain_condition(session))
        .order_by(col(AuditEventRow.seq).desc())
        .limit(1)
    ).first()
    return (int(row[0]), str(row[1]), stored_time(row[2])) if row else (0, GENESIS_HASH, None)


def head(session: Session) -> tuple[int, str]:
    """The sequence number and hash of the newest event; ``(0, GENESIS_HASH)`` when empty."""
    seq, hash_, _ = _newest(session)
    return seq, hash_


_PREV_GAP = '"prev_hash":""'
_SEQ_GAP = '"seq":0'


def hash_template(fields: dict[str, Any]) -> tuple[str, str, str]:
    """``(head, mid, tail)`` such that ``head + prev_hash + mid + str(seq) + tail`` is the
    canonical JSON that :meth:`AuditEvent.computed_hash` hashes, for an event with ``fields``
    (its hashed fields but ``prev_hash`` and ``seq``).

    Keys are sorted, so ``prev_hash`` and ``seq`` sit between known neighbours, and inside
    string values quotes are escaped: the two gaps are found without ambiguity.
    """
    rendered = canonical_json({"v": 1, **fields, "prev_hash": "", "seq": 0}).decode("utf-8")
    at = rendered.index(_PREV_GAP)
    head = rendered[:at] + '"prev_hash":"'
    rest = rendered[at + len(_PREV_GAP) :]
    at = rest.index(_SEQ_GAP)
    return head, '"' + rest[:at] + '"seq":', rest[at + len(_SEQ_GAP) :]


_TIME_GAP = '"time":""'


def time_template(tail: str) -> tuple[str, str]:
    """``tail`` (of :func:`hash_template`, rendered with an empty ``time``) split around the
    time text: ``before + time + after``. Keys are sorted and only ``time`` and ``v`` follow
    ``seq``, so the gap is found without ambiguity."""
    at = tail.index(_TIME_GAP)
    return tail[:at] + '"time":"', '"' + tail[at + len(_TIME_GAP) :]


def _append_postgresql(session: Session, mutations: list[Mutation]) -> None:
    # The event's time is left for the database to fill in under the append lock (migration
    # 0010), so that times follow the sequence: an event's ``time`` is when it was appended.
    events = []
    for mutation in mutations:
        fields = {
            "time": "",
            "actor": mutation.actor,
            "action": mutation.action,
            "resource": mutation.resource,
            "request_id": mutation.request_id,
            "before_sha256": object_digest(mutation.before),
            "after_sha256": object_digest(mutation.after),
        }
        head, mid, tail = hash_template(fields)
        tail, after_time = time_template(tail)
        events.append(
            {**fields, "head": head, "mid": mid, "tail": tail, "tail_after_time": after_time}
        )
    session.flush()
    _APPEND.rows(session.connection(), {"k": AUDIT_LOCK_KEY, "events": events})


def append_events(session: Session, mutations: list[Mutation]) -> None:
    """The mutation hook: append one chained event per mutation, in the caller's transaction."""
    if not mutations:
        return
    if session.get_bind().dialect.name == "postgresql":
        # Pending ORM changes go first (in the flush), so the events follow the rows they
        # describe; then one call appends them all.
        _append_postgresql(session, mutations)
        return
    # The write transaction already holds SQLite's write lock. The time of appending follows
    # the sequence (the transaction's own time need not, when writers queued for the lock).
    seq, prev, last_time = _newest(session)
    now = datetime.now(UTC)
    time = now if last_time is None else max(now, last_time)
    rows: list[dict[str, Any]] = []
    for mutation in mutations:
        seq += 1
        event = AuditEvent(
            seq=seq,
            time=time,
            actor=mutation.actor,
            action=mutation.action,
            resource=mutation.resource,
            request_id=mutation.request_id,
            before_sha256=object_digest(mutation.before),
            after_sha256=object_digest(mutation.after),
            prev_hash=prev,
            hash="",
        )
        prev = event.computed_hash()
        rows.append(
            {
                "seq": seq,
                "time": time,
                "actor": event.actor,
                "action": event.action,
                "resource": event.resource,
                "request_id": event.request_id,
                "before_sha256": event.before_sha256,
                "after_sha256": event.after_sha256,
                "prev_hash": event.prev_hash,
                "hash": prev,
            }
        )
    # Pending ORM changes go first, so that the events follow the rows they describe; then
    # one Core INSERT (no ORM objects to track) for all the events.
    session.flush()
    session.connection().execute(_INSERT_EVENT, rows[0] if len(rows) == 1 else rows)


def install(store: Store) -> None:
    """Register :func:`append_events` on ``store`` (once), so every mutation is audited."""
    if append_events not in store.hooks:
        store.hooks.append(append_events)
