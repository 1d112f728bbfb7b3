"""Verifying the chain: recompute every hash and link, and compare with a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from controlplane.audit._canonical import GENESIS_HASH
from controlplane.audit._chain import chain_condition
from controlplane.audit._query import iter_events
from controlplane.audit._signing import Checkpoint, PublicKeyLike, check_checkpoint
from controlplane.store import Store
from controlplane.store.tables import AuditEventRow
from modelplane.audit_chain import (
    ExportProblem,
    checkpoint_mismatch_message,
    intact_message,
    truncated_message,
)

#: What broke the chain: the server's verify names the first seven problems an offline check
#: of an export names too (one list, so the two always spell them alike).
Problem = ExportProblem


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`.

    ``first_bad_seq`` names the first event found broken (for a missing event, the sequence
    number that is missing); ``problem`` says how, ``message`` says it for a person.
    ``checked``, ``head_seq`` and ``head_hash`` describe the chain up to its last good event.
    ``signature_verified`` is None when no checkpoint or no public key was given.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: Problem | None = None
    message: str = ""
    signature_verified: bool | None = None


#: Events verified between two questions whether the caller still wants the result.
STILL_WANTED_EVERY = 1000


class VerifyStopped(Exception):
    """:func:`verify` ended early: the caller no longer wanted its result (its call ended).
    ``checked`` events had been verified."""

    def __init__(self, checked: int) -> None:
        super().__init__(f"verification stopped after {checked} events")
        self.checked = checked


def _below_one(store: Store) -> tuple[int, int] | None:
    """The lowest sequence number under 1 and how many events have one; None when none do."""
    with store.read() as tx:
        lowest, count = tx.session.exec(
            select(func.min(AuditEventRow.seq), func.count()).where(col(AuditEventRow.seq) < 1)
        ).one()
    return (int(lowest), int(count)) if count else None


def _not_whole(store: Store) -> tuple[int, object, int] | None:
    """On SQLite (whose columns take a value of any type), a row whose ``seq`` is not a whole
    number: the sequence number it sits at, its ``seq`` as stored, and how many rows have one;
    None when none do (always on PostgreSQL, whose column holds whole numbers only).

    A number (``2.5``) sits one after the whole number before it. Text or bytes compare with
    no number (SQLite sorts them after every one), so such a row sits at the first sequence
    number the chain lacks: the place it held when its ``seq`` was edited, or one after the
    chain's last event when none is lacking. Of several such rows, the one that sits first is
    named.
    """
    with store.read() as tx:
        if tx.session.get_bind().dialect.name != "sqlite":
            return None
        kind = func.typeof(AuditEventRow.seq)
        count = tx.session.exec(select(func.count()).where(kind != "integer")).one()
        if not count:
            return None
        places: list[tuple[int, object]] = []
        number = tx.session.exec(select(func.min(AuditEventRow.seq)).where(kind == "real")).one()
        if number is not None:
            before = tx.session.exec(
                select(func.max(AuditEventRow.seq)).where(
                    kind == "integer", col(AuditEventRow.seq) < number
                )
            ).one()
            places.append((int(before or 0) + 1, number))
        other = tx.session.exec(
            select(func.min(AuditEventRow.seq)).where(kind.not_in(("integer", "real")))
        ).one()
        if other is not None:
            places.append((_first_lacking(tx.session), other))
    at, value = min(places, key=lambda place: place[0])
    return at, value, int(count)


def _first_lacking(session: Session) -> int:
    """The first sequence number from 1 that no event of the chain has; one after the chain's
    last event when none is lacking: the place (counting the chain's events in order from 1)
    of the first event whose sequence number is not its place. Plain SQL but for the chain's
    condition, so it reads alike on either backend."""
    numbered = (
        select(
            col(AuditEventRow.seq).label("seq"),
            func.row_number().over(order_by=col(AuditEventRow.seq)).label("place"),
        )
        .where(chain_condition(session))
        .subquery()
    )
    first, count = session.exec(
        select(
            func.min(case((numbered.c.seq != numbered.c.place, numbered.c.place))),
            func.count(),
        ).select_from(numbered)
    ).one()
    return int(first) if first is not None else int(count) + 1


def verify(
    store: Store,
    checkpoint: Checkpoint | None = None,
    public_key: PublicKeyLike | None = None,
    *,
    wanted: Callable[[], bool] | None = None,
) -> VerifyResult:
    """Recompute the chain from the first event and report the first break.

    Detects an edited event (its hash no longer matches its fields), a deleted one (a gap in
    the sequence numbers), a relinked one (``prev_hash`` not the previous event's hash), one
    inserted outside the chain (a sequence number below 1, or on SQLite one that is not a whole
    number: ``first_bad_seq`` is then the number it sits at, after the events before it, which
    are checked and reported as for any other break) and, given a checkpoint, a chain
    cut back behind it or rewritten up to it. With ``public_key`` the checkpoint's signature is
    checked too: a checkpoint whose signature does not verify fails the result
    (``CHECKPOINT_SIGNATURE_INVALID`` when the chain itself is intact) and is not compared with
    the chain, which is still walked to its head; the server's key (a
    :class:`~controlplane.audit.SigningKeys`) checks it with the key it names, a retired one
    included.

    Without a checkpoint only the chain's own consistency is checked: someone able to write
    the database can rewrite events and recompute every hash after them, or cut the newest
    events off, and the chain still holds together; the message of a result that passes says
    so. A checkpoint shows such a change up to its event (but cannot say which event changed).

    ``wanted``, when given, is asked every :data:`STILL_WANTED_EVERY` events whether the result
    is still wanted (a call's ``is_active``); :class:`VerifyStopped` ends the walk when not.
    """
    signature_ok: bool | None = None
    signature_note = ""
    if checkpoint is not None and public_key is not None:
        signature_ok, signature_note = check_checkpoint(checkpoint, public_key)
    trusted = checkpoint if signature_ok is not False else None

    expected, prev, checked = 1, GENESIS_HASH, 0
    head_seq, head_hash = 0, GENESIS_HASH

    def broken(seq: int | None, problem: Problem, message: str) -> VerifyResult:
        if signature_ok is False:
            message = f"{message}; besides, {signature_note}"
        return VerifyResult(
            False, checked, head_seq, head_hash, seq, problem, message, signature_ok
        )

    below = _below_one(store)
    if below is not None:
        lowest, count = below
        return broken(
            lowest,
            Problem.EVENT_OUT_OF_RANGE,
            f"event {lowest} is out of range: sequence numbers start at 1, and {count} "
            f"event{'s' if count > 1 else ''} below 1 {'were' if count > 1 else 'was'} "
            "inserted outside the chain",
        )
    not_whole = _not_whole(store)
    # A row numbered by no whole number is reported where it sits, after the events before it
    # are walked (and reported as intact) as for any other break.

    def out_of_range(at: int, value: object, count: int) -> VerifyResult:
        others = count - 1
        return broken(
            at,
            Problem.EVENT_OUT_OF_RANGE,
            f"event {at} is out of range: its sequence number is {value!r}, not a whole "
            "number, so the event was altered or inserted outside the chain"
            + (
                f"; {others} other event{'s' if others > 1 else ''} "
                f"{'have' if others > 1 else 'has'} a sequence number that is not a whole "
                "number too"
                if others
                else ""
            ),
        )

    with closing(iter_events(store)) as events:
        for event in events:
            if wanted is not None and checked % STILL_WANTED_EVERY == 0 and not wanted():
                raise VerifyStopped(checked)
            if not_whole is not None and expected == not_whole[0]:
                return out_of_range(*not_whole)
            if event.seq != expected:
                return broken(
                    expected,
                    Problem.EVENT_MISSING,
                    f"event {expected} is missing: after event {expected - 1} comes {event.seq}",
                )
            if event.computed_hash() != event.hash:
                return broken(
                    event.seq,
                    Problem.EVENT_ALTERED,
                    f"event {event.seq} ({event.action} {event.resource}) was altered: its fields "
                    "no longer match its hash",
                )
            if event.prev_hash != prev:
                return broken(
                    event.seq,
                    Problem.CHAIN_BROKEN,
                    f"event {event.seq} does not follow event {event.seq - 1}: its prev_hash "
                    "is not that event's hash (an event before it was replaced)",
                )
            if trusted is not None and event.seq == trusted.seq and event.hash != trusted.head_hash:
                return broken(
                    event.seq,
                    Problem.CHECKPOINT_MISMATCH,
                    checkpoint_mismatch_message("the chain", event.seq, trusted.time.isoformat()),
                )
            checked += 1
            expected, prev = event.seq + 1, event.hash
            head_seq, head_hash = event.seq, event.hash
    if not_whole is not None:
        # It sits after the chain's last event.
        return out_of_range(*not_whole)
    if trusted is not None:
        if head_seq < trusted.seq:
            return broken(
                head_seq + 1,
                Problem.TRUNCATED,
                truncated_message("the chain", head_seq, trusted.seq, trusted.time.isoformat()),
            )
        if trusted.seq == 0 and trusted.head_hash != GENESIS_HASH:
            return broken(0, Problem.CHECKPOINT_MISMATCH, "the empty-chain checkpoint is malformed")
    if signature_ok is False:
        return VerifyResult(
            False,
            checked,
            head_seq,
            head_hash,
            None,
            Problem.CHECKPOINT_SIGNATURE_INVALID,
            f"{signature_note}; {intact_message('the chain itself', checked, head_seq)}",
            signature_ok,
        )
    return VerifyResult(
        True,
        checked,
        head_seq,
        head_hash,
        message=_intact(checked, head_seq, trusted, signature_ok, signature_note),
        signature_verified=signature_ok,
    )


def _intact(
    checked: int,
    head_seq: int,
    checkpoint: Checkpoint | None,
    signature_ok: bool | None,
    note: str,
) -> str:
    """The message of a chain that passed: what was shown, and what was not (worded as an
    offline check of an export words it)."""
    if checkpoint is None:
        return intact_message("the chain", checked, head_seq)
    message = intact_message(
        "the chain", checked, head_seq, checkpoint.seq, checkpoint.time.isoformat()
    )
    if signature_ok is None:
        message += "; the checkpoint's signature was not checked"
    elif note:
        message += f"; the checkpoint is {note}"
    return message
