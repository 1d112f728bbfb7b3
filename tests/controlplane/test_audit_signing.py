"""The audit signing key and signed checkpoints (SQLite; the chain tests cover both backends)."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import text

from controlplane import audit
from controlplane.audit import Checkpoint, Problem
from controlplane.services import ModelService
from controlplane.store import Store
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.server.context import RequestContext

CTX = RequestContext(principal="alice")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    audit.install(s)
    svc = ModelService(s)
    for i in range(3):
        svc.create(CTX, f"m{i}")
    yield s
    s.close()


def test_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-signing.pem"
    key = audit.load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = audit.load_or_create_signing_key(path)
    assert audit.public_key_pem(again) == audit.public_key_pem(key)
    assert audit.key_id(again) == audit.key_id(key)
    # The public PEM is a standard SubjectPublicKeyInfo that other tools can read.
    public = load_pem_public_key(audit.public_key_pem(key).encode())
    public.verify(key.sign(b"msg"), b"msg")  # type: ignore[call-arg,union-attr]


def test_replicas_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    pems: list[str] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        pems.append(audit.public_key_pem(audit.load_or_create_signing_key(path)))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pems) == 6 and len(set(pems)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["audit.pem"]


def test_unreadable_key_file_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    path.write_text("not a key")
    with pytest.raises(FailedPrecondition) as info:
        audit.load_or_create_signing_key(path)
    assert info.value.reason == "SIGNING_KEY_INVALID"
    assert str(path) in info.value.message


def test_checkpoint_round_trips_through_its_file(store: Store, tmp_path: Path) -> None:
    key = audit.load_or_create_signing_key(tmp_path / "k.pem")
    cp = audit.checkpoint(store, key)
    assert cp.seq == 3 and cp.key_id == audit.key_id(key)
    cp.save(tmp_path / "cp.json")
    loaded = Checkpoint.load(tmp_path / "cp.json")
    assert loaded == cp
    assert loaded.signature_valid(audit.public_key_pem(key))
    result = audit.verify(store, loaded, audit.public_key_pem(key))
    assert result.ok and result.signature_verified is True


def _lower_seq(data: dict[str, Any], store: Store) -> None:
    # A plausible forgery: point the checkpoint at an earlier, genuine head.
    events, _ = audit.list_events(store)
    data["seq"], data["head_hash"] = 2, events[1].hash


def _later_time(data: dict[str, Any], store: Store) -> None:
    data["time"] = (datetime.fromisoformat(data["time"]) + timedelta(days=1)).isoformat()


def _flip_signature(data: dict[str, Any], store: Store) -> None:
    sig = bytearray(data["signature"].encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    data["signature"] = sig.decode()


def _garbage_signature(data: dict[str, Any], store: Store) -> None:
    data["signature"] = "%%%not base64%%%"


@pytest.mark.parametrize("change", [_lower_seq, _later_time, _flip_signature, _garbage_signature])
def test_a_tampered_checkpoint_file_fails_verification(
    store: Store, tmp_path: Path, change: Any
) -> None:
    key = audit.load_or_create_signing_key(tmp_path / "k.pem")
    path = tmp_path / "cp.json"
    audit.checkpoint(store, key).save(path)
    data = json.loads(path.read_text())
    change(data, store)
    path.write_text(json.dumps(data))
    forged = Checkpoint.load(path)
    assert not forged.signature_valid(key)
    result = audit.verify(store, forged, audit.public_key_pem(key))
    assert not result.ok
    assert result.problem is Problem.CHECKPOINT_SIGNATURE_INVALID
    assert result.signature_verified is False
    # The chain is still walked: its real head and count, and no event named as broken.
    head = audit.list_events(store)[0][-1]
    assert (result.checked, result.head_seq, result.head_hash) == (3, 3, head.hash)
    assert result.first_bad_seq is None
    assert result.message.startswith("the checkpoint's signature does not verify")
    # Without the key the forged checkpoint is only compared, and the chain itself is fine.
    assert audit.verify(store).ok


def test_a_broken_chain_is_reported_beside_an_invalid_signature(store: Store) -> None:
    ours = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(store, Ed25519PrivateKey.generate())
    with store.engines.write.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    result = audit.verify(store, cp, ours.public_key())
    assert (result.ok, result.problem, result.first_bad_seq) == (False, Problem.EVENT_ALTERED, 2)
    assert (result.checked, result.head_seq, result.signature_verified) == (1, 1, False)
    assert "event 2" in result.message and "signature does not verify" in result.message


def test_a_checkpoint_signed_by_another_key_fails(store: Store, tmp_path: Path) -> None:
    cp = audit.checkpoint(store, Ed25519PrivateKey.generate())
    ours = audit.load_or_create_signing_key(tmp_path / "k.pem")
    result = audit.verify(store, cp, ours.public_key())
    assert result.problem is Problem.CHECKPOINT_SIGNATURE_INVALID


def test_checkpoint_of_an_empty_chain(tmp_path: Path) -> None:
    s = Store.open(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        key = Ed25519PrivateKey.generate()
        cp = audit.checkpoint(s, key)
        assert (cp.seq, cp.head_hash) == (0, audit.GENESIS_HASH)
        assert audit.verify(s, cp, key).ok
    finally:
        s.close()


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"seq": 1}', '{"seq": "x", "head_hash": "", "time": "", "key_id": ""}'],
)
def test_malformed_checkpoint_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cp.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument) as info:
        Checkpoint.load(path)
    assert info.value.reason == "INVALID_CHECKPOINT"


def test_bad_public_key_is_refused(store: Store) -> None:
    cp = audit.checkpoint(store, Ed25519PrivateKey.generate())
    with pytest.raises(InvalidArgument) as info:
        audit.verify(store, cp, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert info.value.reason == "INVALID_PUBLIC_KEY"


def test_canonical_digest_is_independent_of_time_zone_and_refuses_unknown_types() -> None:
    @dataclass(frozen=True)
    class Thing:
        name: str
        at: datetime

    utc = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    shifted = utc.astimezone(ZoneInfo("Asia/Kolkata"))
    assert audit.object_digest(Thing("x", utc)) == audit.object_digest(Thing("x", shifted))
    assert audit.object_digest(Thing("x", utc)) != audit.object_digest(Thing("y", utc))
    assert audit.object_digest(None) == ""
    assert audit.canonical_json({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
    with pytest.raises(TypeError):
        audit.object_digest({"x": object()})
