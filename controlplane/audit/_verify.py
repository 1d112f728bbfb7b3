"""Verifying the chain: recompute every hash and link, and compare with a checkpoint."""

from __future__ import annotations

import enum
from contextlib import closing
from dataclasses import dataclass

from controlplane.audit._canonical import GENESIS_HASH
from controlplane.audit._query import iter_events
from controlplane.audit._signing import Checkpoint, PublicKeyLike
from controlplane.store import Store


class Problem(enum.StrEnum):
    """What broke the chain."""

    EVENT_ALTERED = "EVENT_ALTERED"
    EVENT_MISSING = "EVENT_MISSING"
    CHAIN_BROKEN = "CHAIN_BROKEN"
    TRUNCATED = "TRUNCATED"
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    CHECKPOINT_SIGNATURE_INVALID = "CHECKPOINT_SIGNATURE_INVALID"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`.

    ``first_bad_seq`` names the first event found broken (for a missing event, the sequence
    number that is missing); ``problem`` says how, ``message`` says it for a person.
    ``signature_verified`` is None when no checkpoint or no public key was given.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: Problem | None = None
    message: str = "the chain is intact"
    signature_verified: bool | None = None


def verify(
    store: Store, checkpoint: Checkpoint | None = None, public_key: PublicKeyLike | None = None
) -> VerifyResult:
    """Recompute the chain from the first event and report the first break.

    Detects an edited event (its hash no longer matches its fields), a deleted one (a gap in
    the sequence numbers), a relinked one (``prev_hash`` not the previous event's hash) and,
    given a checkpoint, a chain cut back behind it or rewritten up to it. With ``public_key``
    the checkpoint's signature is checked first. Without a checkpoint, removing the newest
    events cannot be told from their never having been written.
    """
    signature_ok: bool | None = None
    if checkpoint is not None and public_key is not None:
        signature_ok = checkpoint.signature_valid(public_key)

    expected, prev, checked = 1, GENESIS_HASH, 0
    head_seq, head_hash = 0, GENESIS_HASH

    def broken(seq: int | None, problem: Problem, message: str) -> VerifyResult:
        return VerifyResult(
            False, checked, head_seq, head_hash, seq, problem, message, signature_ok
        )

    if signature_ok is False:
        return broken(
            None,
            Problem.CHECKPOINT_SIGNATURE_INVALID,
            "the checkpoint's signature does not verify with the given public key; the "
            "checkpoint was altered or signed by another key",
        )
    with closing(iter_events(store)) as events:
        for event in events:
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
            if (
                checkpoint is not None
                and event.seq == checkpoint.seq
                and event.hash != checkpoint.head_hash
            ):
                return broken(
                    event.seq,
                    Problem.CHECKPOINT_MISMATCH,
                    f"event {event.seq} differs from the checkpoint of "
                    f"{checkpoint.time.isoformat()}: the chain was rewritten up to it",
                )
            checked += 1
            expected, prev = event.seq + 1, event.hash
            head_seq, head_hash = event.seq, event.hash
    if checkpoint is not None:
        if head_seq < checkpoint.seq:
            return broken(
                head_seq + 1,
                Problem.TRUNCATED,
                f"the chain ends at event {head_seq} but the checkpoint of "
                f"{checkpoint.time.isoformat()} saw {checkpoint.seq} events: events "
                f"{head_seq + 1} to {checkpoint.seq} were removed",
            )
        if checkpoint.seq == 0 and checkpoint.head_hash != GENESIS_HASH:
            return broken(0, Problem.CHECKPOINT_MISMATCH, "the empty-chain checkpoint is malformed")
    return VerifyResult(True, checked, head_seq, head_hash, signature_verified=signature_ok)
