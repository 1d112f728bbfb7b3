"""`audit verify` on a trail edited by hand: a row whose sequence number is not a whole number
is reported after the intact events before it (as every other break is), in plain words; and
an offline check against a checkpoint with the wrong public key says which key to give."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import audit
from controlplane.audit import Problem
from controlplane.services import ModelService
from controlplane.store import Store
from modelplane.audit_chain import GENESIS_HASH
from modelplane.cli import main
from modelplane.server.context import RequestContext
from tests.controlplane.conftest import RunningControlPlane

#: Nothing listens here: offline verification must not need a server.
NO_SERVER = "127.0.0.1:9"

COLUMNS = (
    "seq, time, actor, action, resource, request_id, before_sha256, after_sha256, prev_hash, hash"
)


def tamper(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as con:
        for statement in statements:
            con.execute(statement)
    con.close()


def cli(capsys: pytest.CaptureFixture[str], server: str, *argv: str) -> tuple[int, Any, str]:
    """``audit verify`` by the CLI as an auditor: exit code, JSON document, stderr."""
    capsys.readouterr()
    code = main(
        ["--server", server, "--as", "auditor", "--output", "json", "audit", "verify", *argv]
    )
    out, err = capsys.readouterr()
    return code, json.loads(out), err


# --- a sequence number that is not a whole number -------------------------------------------


def test_the_server_reports_the_intact_events_before_it(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with controlplane.client("alice") as c:
        for i in range(12):
            c.create_model(f"m{i}")
    with controlplane.client("auditor") as c:
        hashes = {e.seq: e.hash for e in c.audit_events()}
    assert len(hashes) == 12
    tamper(
        Path(controlplane.db_url.removeprefix("sqlite:///")),
        "UPDATE audit_events SET seq = 10.5 WHERE seq = 10",
    )
    code, doc, err = cli(capsys, controlplane.address)
    assert code == 1 and not doc["ok"]
    # The server's document spells its 64-bit numbers as JSON text, as protobuf's JSON does.
    assert (doc["problem"], int(doc["first_bad_seq"])) == ("EVENT_OUT_OF_RANGE", 10)
    assert (int(doc["checked"]), int(doc["head_seq"]), doc["head_hash"]) == (9, 9, hashes[9])
    assert doc["message"] == (
        "event 10 is out of range: its sequence number is 10.5, not a whole number, so the "
        "event was altered or inserted outside the chain"
    )
    assert doc["message"] in err

    # The offline check of its export agrees on the intact prefix.
    export = tmp_path / "audit.jsonl"
    with controlplane.client("auditor") as c, export.open("wb") as f:
        c.export_audit(f)
    code, offline, _ = cli(capsys, NO_SERVER, "--export", str(export))
    assert code == 1 and offline["first_bad_seq"] == 10
    assert (offline["checked"], offline["head_seq"], offline["head_hash"]) == (9, 9, hashes[9])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite store whose audit chain holds six events."""
    path = tmp_path / "audit.db"
    store = Store.open(f"sqlite:///{path}")
    audit.install(store)
    for i in range(6):
        ModelService(store).create(RequestContext(principal="alice"), f"m{i}")
    store.close()
    return path


@pytest.fixture
def hashes(db: Path) -> dict[int, str]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, hash FROM audit_events").fetchall()
    con.close()
    return {0: GENESIS_HASH, **dict(rows)}


@pytest.fixture
def opened(db: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{db}")
    audit.install(store)
    yield store
    store.close()


@pytest.mark.parametrize(
    ("statement", "bad", "shown"),
    [
        # Replacing an event's number, at the start, in the middle and at the end.
        ("UPDATE audit_events SET seq = 0.5 + 1 WHERE seq = 1", 1, "1.5"),
        ("UPDATE audit_events SET seq = 4.25 WHERE seq = 4", 4, "4.25"),
        ("UPDATE audit_events SET seq = 6.5 WHERE seq = 6", 6, "6.5"),
        # Text and bytes sit where the chain lacks the event.
        ("UPDATE audit_events SET seq = 'x' WHERE seq = 1", 1, "'x'"),
        ("UPDATE audit_events SET seq = '3x' WHERE seq = 3", 3, "'3x'"),
        ("UPDATE audit_events SET seq = CAST('5' AS BLOB) WHERE seq = 5", 5, "b'5'"),
        ("UPDATE audit_events SET seq = 'last' WHERE seq = 6", 6, "'last'"),
        # A row added between two events, or after the last.
        (
            f"INSERT INTO audit_events ({COLUMNS}) SELECT 3.5, {COLUMNS[5:]} FROM audit_events "
            "WHERE seq = 3",
            4,
            "3.5",
        ),
        (
            f"INSERT INTO audit_events ({COLUMNS}) SELECT 'z', {COLUMNS[5:]} FROM audit_events "
            "WHERE seq = 6",
            7,
            "'z'",
        ),
    ],
)
def test_the_events_before_it_are_checked_and_reported(
    db: Path, opened: Store, hashes: dict[int, str], statement: str, bad: int, shown: str
) -> None:
    tamper(db, statement)
    result = audit.verify(opened)
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_OUT_OF_RANGE, bad)
    assert (result.checked, result.head_seq, result.head_hash) == (
        bad - 1,
        bad - 1,
        hashes[bad - 1],
    )
    assert result.message == (
        f"event {bad} is out of range: its sequence number is {shown}, not a whole number, so "
        "the event was altered or inserted outside the chain"
    )


def test_an_earlier_break_is_reported_first(
    db: Path, opened: Store, hashes: dict[int, str]
) -> None:
    tamper(
        db,
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2",
        "UPDATE audit_events SET seq = 5.5 WHERE seq = 5",
    )
    result = audit.verify(opened)
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_ALTERED, 2)
    assert (result.checked, result.head_seq, result.head_hash) == (1, 1, hashes[1])


def test_several_such_rows_name_the_first_and_count_the_others(
    db: Path, opened: Store, hashes: dict[int, str]
) -> None:
    tamper(db, "UPDATE audit_events SET seq = 3.5 WHERE seq = 3")
    result = audit.verify(opened)
    assert "other" not in result.message
    tamper(db, "UPDATE audit_events SET seq = 'y' WHERE seq = 5")
    result = audit.verify(opened)
    assert (result.first_bad_seq, result.checked, result.head_hash) == (3, 2, hashes[2])
    assert result.message.endswith(
        "; 1 other event has a sequence number that is not a whole number too"
    )
    tamper(db, "UPDATE audit_events SET seq = 6.5 WHERE seq = 6")
    result = audit.verify(opened)
    assert (result.first_bad_seq, result.checked) == (3, 2)
    assert result.message.endswith(
        "; 2 other events have a sequence number that is not a whole number too"
    )


def test_with_a_checkpoint_the_walk_stops_at_it_too(
    db: Path, opened: Store, hashes: dict[int, str]
) -> None:
    key = Ed25519PrivateKey.generate()
    checkpoint = audit.checkpoint(opened, key)
    tamper(db, "UPDATE audit_events SET seq = 5.5 WHERE seq = 5")
    result = audit.verify(opened, checkpoint, key.public_key())
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_OUT_OF_RANGE, 5)
    assert (result.checked, result.head_seq, result.signature_verified) == (4, 4, True)


# --- offline: a checkpoint checked with the wrong public key ---------------------------------


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def trail(controlplane: RunningControlPlane, tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """A server's export, a checkpoint of it, the server's public key as ``keys show`` prints
    it, and the key id the checkpoint names."""
    with controlplane.client("alice") as c:
        for i in range(3):
            c.create_model(f"m{i}")
    with controlplane.client("auditor") as c:
        saved = c.create_checkpoint()
        key = c.public_key()
        export = tmp_path / "audit.jsonl"
        with export.open("wb") as f:
            c.export_audit(f)
    checkpoint = tmp_path / "head.json"
    fields = ("seq", "head_hash", "time", "key_id", "signature")
    checkpoint.write_text(json.dumps({k: getattr(saved, k) for k in fields}))
    server_pem = tmp_path / "server.pem"
    server_pem.write_text(f"# key id {key.key_id} ({key.algorithm})\n{key.pem}")
    return export, checkpoint, server_pem, saved.key_id


def test_a_wrong_public_key_is_told_which_key_to_give(
    trail: tuple[Path, Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, checkpoint, server_pem, key_id = trail
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(pem(Ed25519PrivateKey.generate()))
    args = ("--export", str(export), "--checkpoint", str(checkpoint))
    code, doc, err = cli(capsys, NO_SERVER, *args, "--public-key", str(wrong))
    assert code == 1 and (doc["problem"], doc["signature"]) == (
        "CHECKPOINT_SIGNATURE_INVALID",
        "invalid",
    )
    assert doc["message"].endswith(
        f"; to check the export against the checkpoint, give with --public-key the public key "
        f"of key '{key_id}', which the checkpoint names (`modelplane keys show` on the server "
        "that signed it prints it); if no server has that key, the checkpoint was altered"
    )
    assert "with --checkpoint" not in doc["message"]
    assert "the export itself is intact (3 events, head event 3)" in doc["message"]
    assert doc["message"] in err
    # Giving the key it names verifies.
    code, doc, _ = cli(capsys, NO_SERVER, *args, "--public-key", str(server_pem))
    assert code == 0 and doc["signature"] == "verified"


def test_an_altered_checkpoint_checked_with_its_own_key_is_called_altered(
    trail: tuple[Path, Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, checkpoint, server_pem, _ = trail
    altered = tmp_path / "altered.json"
    saved = json.loads(checkpoint.read_text())
    altered.write_text(json.dumps({**saved, "seq": saved["seq"] - 1}))
    args = ("--export", str(export), "--checkpoint", str(altered), "--public-key", str(server_pem))
    code, doc, _ = cli(capsys, NO_SERVER, *args)
    assert code == 1 and doc["problem"] == "CHECKPOINT_SIGNATURE_INVALID"
    assert doc["message"].endswith(
        "; the given key is the one the checkpoint names, so the checkpoint was altered after it "
        "was signed: check the export against an unaltered checkpoint no newer than the export"
    )
    assert "--public-key" not in doc["message"] and "keys show" not in doc["message"]


def test_a_checkpoint_naming_a_key_no_one_has_is_named_as_it_stands(
    trail: tuple[Path, Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, checkpoint, server_pem, _ = trail
    altered = tmp_path / "renamed.json"
    saved = json.loads(checkpoint.read_text())
    altered.write_text(json.dumps({**saved, "key_id": "no such key " + "x" * 100}))
    args = ("--export", str(export), "--checkpoint", str(altered), "--public-key", str(server_pem))
    code, doc, _ = cli(capsys, NO_SERVER, *args)
    assert code == 1 and doc["problem"] == "CHECKPOINT_SIGNATURE_INVALID"
    # Cut to 40 characters, as the note above it shows it.
    shown = repr(("no such key " + "x" * 100)[:40])
    assert doc["message"].endswith(
        f"the public key of key {shown}, which the checkpoint names (`modelplane keys show` on "
        "the server that signed it prints it); if no server has that key, the checkpoint was "
        "altered"
    )
