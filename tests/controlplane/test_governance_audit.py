"""The audit trail over gRPC and the CLI: listing, export, signed checkpoints, and
verification that names the first event broken by SQL tampering."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.audit import event_hash
from modelplane.cli import main
from modelplane.errors import InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def cli(
    cp: RunningControlPlane, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--server", cp.address, "--output", "json", "--as", "auditor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def history(cp: RunningControlPlane) -> str:
    model_id = unique()
    with cp.client("alice") as alice:
        alice.create_model(model_id)
        alice.update_model(model_id, description="one")
    with cp.client("bob") as bob:
        bob.update_model(model_id, description="two")
        bob.create_policy(unique("p"), target=unique("t"), rules=["true"])
    return model_id


def test_list_filters_and_export(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model_id = history(controlplane)
    with controlplane.client() as c:
        everything = list(c.audit_events(page_size=2))
        mine = list(c.audit_events(resource=f"models/{model_id}"))
        bobs = list(c.audit_events(actor="bob"))
        future = list(c.audit_events(since=datetime.now(UTC) + timedelta(hours=1)))
        with pytest.raises(InvalidArgument):
            list(c.audit_events(resource="bad\x01"))
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    assert [e.action for e in mine] == ["CreateModel", "UpdateModel", "UpdateModel"]
    assert {e.actor for e in bobs} == {"bob"} and len(bobs) == 2
    assert future == []
    code, out, _ = cli(controlplane, capsys, "audit", "list", "--actor", "alice")
    assert code == 0 and [e["actor"] for e in json.loads(out)["events"]] == ["alice", "alice"]
    code, _, _ = cli(controlplane, capsys, "audit", "list", "--since", "yesterday")
    assert code == 2
    code, out, _ = cli(controlplane, capsys, "audit", "export", "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == len(everything)
    prev = "0" * 64
    for line in lines:
        fields = {k: v for k, v in line.items() if k != "hash"}
        assert line["prev_hash"] == prev and line["hash"] == event_hash(fields)
        prev = line["hash"]
    target = tmp_path / "audit.jsonl"
    code, _, _ = cli(controlplane, capsys, "audit", "export", "--out", str(target))
    assert code == 0 and target.read_text() == out


def test_checkpoint_and_verify_detect_tampering(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    history(controlplane)
    cp_file = tmp_path / "checkpoint.json"
    code, out, _ = cli(controlplane, capsys, "audit", "checkpoint", "--out", str(cp_file))
    saved = json.loads(cp_file.read_text())
    assert code == 0 and saved["seq"] >= 4 and saved["signature"]
    code, out, _ = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(cp_file))
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["signature"] == "verified"
    forged = dict(saved, head_hash="0" * 64)
    bad_file = tmp_path / "forged.json"
    bad_file.write_text(json.dumps(forged))
    code, out, _ = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(bad_file))
    assert code == 1 and json.loads(out)["signature"] == "invalid"
    db = controlplane.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        (actor,) = conn.execute("SELECT actor FROM audit_events WHERE seq = 3").fetchone()
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    code, out, err = cli(controlplane, capsys, "audit", "verify")
    doc = json.loads(out)
    assert code == 1 and doc["first_bad_seq"] == "3" and doc["problem"] == "EVENT_ALTERED"
    assert "event 3" in err
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET actor = ? WHERE seq = 3", (actor,))
        conn.execute("DELETE FROM audit_events WHERE seq = 2")
    code, out, _ = cli(controlplane, capsys, "audit", "verify")
    assert code == 1 and json.loads(out)["first_bad_seq"] == "2"
    code, _, err = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(tmp_path))
    assert code == 2


def test_bad_export_format_is_refused(controlplane: RunningControlPlane, tmp_path: Path) -> None:
    with (
        controlplane.client() as c,
        (tmp_path / "out").open("wb") as sink,
        pytest.raises(InvalidArgument) as err,
    ):
        c.export_audit(sink, format="xml")
    assert err.value.reason == "INVALID_FORMAT"
    with controlplane.client() as c:
        assert c.verify_audit().ok
