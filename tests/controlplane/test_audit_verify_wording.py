"""What ``audit verify`` claims: without a checkpoint only that the chain holds together (a
rewrite that recomputes every hash, or a cut tail, cannot show); with one, where the chain
differs from it as far as that can be known, and which key signed it. The tampering is done
on a real SQLite file as someone with write access to it would do it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import audit
from controlplane.audit import Problem, SigningKeys
from controlplane.services import ModelService
from controlplane.store import Store
from modelplane.server.context import RequestContext
from tests.controlplane.test_audit import all_events, expected_hash, make_history, rewrite_from, sql


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Six chained events (two models, each updated twice)."""
    s = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    audit.install(s)
    make_history(s)
    yield s
    s.close()


def _rehash_from(store: Store, seq: int) -> None:
    """Recompute ``prev_hash`` and ``hash`` of event ``seq`` and every later one."""
    events = all_events(store)
    prev = events[seq - 2].hash if seq > 1 else audit.GENESIS_HASH
    for event in events[seq - 1 :]:
        fields = {**event.to_dict(), "prev_hash": prev}
        prev = expected_hash(fields)
        sql(
            store,
            "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s",
            p=fields["prev_hash"],
            h=prev,
            s=event.seq,
        )


def _delete_renumber_rehash(store: Store, seq: int) -> None:
    sql(store, "DELETE FROM audit_events WHERE seq = :s", s=seq)
    sql(store, "UPDATE audit_events SET seq = seq - 1 WHERE seq > :s", s=seq)
    _rehash_from(store, seq)


def _truncate(store: Store, seq: int) -> None:
    sql(store, "DELETE FROM audit_events WHERE seq >= :s", s=seq)


TAMPERING = {
    "rewrite event 2, rehash": lambda s: rewrite_from(s, 2, "models/forged"),
    "delete event 3, renumber, rehash": lambda s: _delete_renumber_rehash(s, 3),
    "cut the tail from event 5": lambda s: _truncate(s, 5),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_without_a_checkpoint_a_consistent_rewrite_passes_with_what_it_cannot_show(
    store: Store, tamper: object
) -> None:
    tamper(store)  # type: ignore[operator]
    result = audit.verify(store)
    assert result.ok and result.problem is None
    assert result.message.startswith(
        f"the chain is intact ({result.checked} events, head event {result.head_seq}) as far "
        "as the chain alone shows"
    )
    assert "a rewrite that recomputes every hash, or a cut tail" in result.message
    assert "modelplane audit checkpoint" in result.message


def test_a_rehashed_rewrite_is_placed_at_or_before_the_checkpoints_event(store: Store) -> None:
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(store, key)
    rewrite_from(store, 2, "models/forged")
    result = audit.verify(store, cp, key.public_key())
    assert (result.ok, result.problem, result.first_bad_seq) == (
        False,
        Problem.CHECKPOINT_MISMATCH,
        6,
    )
    assert "differs from the checkpoint" in result.message
    assert "at or before event 6" in result.message
    assert "which event cannot be told" in result.message
    assert "rewritten up to it" not in result.message


def test_an_event_removed_with_the_rest_renumbered_is_not_called_a_cut_tail(
    store: Store,
) -> None:
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(store, key)
    _delete_renumber_rehash(store, 3)
    result = audit.verify(store, cp, key.public_key())
    assert (result.ok, result.problem, result.first_bad_seq) == (False, Problem.TRUNCATED, 6)
    assert "the chain ends at event 5 but the checkpoint" in result.message
    assert "1 event is gone: event 6 was cut from the end, or events up to 6 were removed" in (
        result.message
    )
    assert "events 6 to 6" not in result.message


def test_a_cut_tail_names_the_events_gone(store: Store) -> None:
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(store, key)
    _truncate(store, 5)
    result = audit.verify(store, cp, key.public_key())
    assert (result.ok, result.problem, result.first_bad_seq) == (False, Problem.TRUNCATED, 5)
    assert "2 events are gone: events 5 to 6 were cut from the end, or" in result.message


def test_with_a_checkpoint_a_pass_says_what_it_covers(store: Store) -> None:
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(store, key)
    ModelService(store).create(RequestContext(principal="bob"), "later")  # one event after it
    result = audit.verify(store, cp, key.public_key())
    assert result.ok and result.signature_verified is True
    assert result.message.startswith("the chain is intact (7 events, head event 7)")
    assert "events 1 to 6 are as the checkpoint" in result.message
    assert "the events after 6 hold together" in result.message
    unsigned = audit.verify(store, cp)
    assert unsigned.ok and "the checkpoint's signature was not checked" in unsigned.message


def test_a_checkpoint_of_another_key_names_both_keys(store: Store) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old_id, new_id = audit.key_id(old), audit.key_id(new)
    cp = audit.checkpoint(store, old)
    # A public key given (as an offline check gives it).
    result = audit.verify(store, cp, new.public_key())
    assert result.problem is Problem.CHECKPOINT_SIGNATURE_INVALID
    assert f"it names key {old_id}, and the given public key is {new_id}" in result.message
    # The server's keys, without and with the old key kept for verification.
    result = audit.verify(store, cp, SigningKeys(new))
    assert result.problem is Problem.CHECKPOINT_SIGNATURE_INVALID
    assert f"it names key {old_id}, and this server's key is {new_id}" in result.message
    assert "(no verification keys)" in result.message and "--verification-keys" in result.message
    result = audit.verify(store, cp, SigningKeys(new, {old_id: old.public_key()}))
    assert result.ok and result.signature_verified is True
    assert f"the checkpoint is signed by retired key {old_id}" in result.message
    # A checkpoint altered after it was signed by a key the server knows.
    forged = audit.Checkpoint(cp.seq - 1, cp.head_hash, cp.time, cp.key_id, cp.signature)
    result = audit.verify(store, forged, SigningKeys(new, {old_id: old.public_key()}))
    assert result.problem is Problem.CHECKPOINT_SIGNATURE_INVALID
    assert f"with key {old_id}, which it names (a retired key of this server)" in result.message
    assert "the checkpoint was altered" in result.message
