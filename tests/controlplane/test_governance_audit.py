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
        # A filter that names no resource (a typo, a bare id) is refused, not answered with
        # no events as if nothing had happened; a whole collection is a filter too.
        for typo in ("not a resource", model_id, f"model/{model_id}", "models//x"):
            with pytest.raises(InvalidArgument) as refused:
                list(c.audit_events(resource=typo))
            assert refused.value.reason == "INVALID_RESOURCE_FILTER", typo
            assert "models/fraud" in refused.value.message
        assert len(list(c.audit_events(resource="models"))) >= len(mine)
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


def test_verify_with_a_badly_signed_checkpoint_still_walks_the_chain(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    history(controlplane)
    cp_file = tmp_path / "checkpoint.json"
    code, _, _ = cli(controlplane, capsys, "audit", "checkpoint", "--out", str(cp_file))
    assert code == 0
    with controlplane.client() as c:
        events = list(c.audit_events())
    forged = dict(json.loads(cp_file.read_text()), head_hash="0" * 64)
    cp_file.write_text(json.dumps(forged))
    code, out, err = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(cp_file))
    doc = json.loads(out)
    assert code == 1 and doc["problem"] == "CHECKPOINT_SIGNATURE_INVALID"
    assert doc["signature"] == "invalid" and doc["first_bad_seq"] == "0"
    assert (doc["checked"], doc["head_seq"]) == (str(len(events)), str(events[-1].seq))
    assert doc["head_hash"] == events[-1].hash
    assert "the checkpoint's signature does not verify" in err
    assert "chain broken" not in err


@pytest.mark.parametrize(
    "since",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+00:00:01",
    ],
)
def test_list_since_past_the_calendar_in_utc_is_a_usage_error(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, _, err = cli(controlplane, capsys, "audit", "list", "--since", since)
    assert code == 2 and "--since" in err
    for at_the_ends in ("0001-01-01T01:00:00+01:00", "9999-12-31T23:59:59Z", "0001-01-01"):
        code, _, _ = cli(controlplane, capsys, "audit", "list", "--since", at_the_ends)
        assert code == 0, at_the_ends


@pytest.mark.parametrize(
    "seq",
    ["1e400", "-1e400", "NaN", "2.0", "2.5", "true", '"3"', "null", "-1", str(2**63), "[1]"],
)
def test_verify_refuses_a_checkpoint_file_whose_seq_is_not_a_whole_number(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path, seq: str
) -> None:
    history(controlplane)
    cp_file = tmp_path / "checkpoint.json"
    code, _, _ = cli(controlplane, capsys, "audit", "checkpoint", "--out", str(cp_file))
    good = json.loads(cp_file.read_text())
    text = json.dumps(dict(good, seq="SEQ")).replace('"SEQ"', seq)
    cp_file.write_text(text)
    code, _, err = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(cp_file))
    assert code == 2 and "not a checkpoint file" in err


@pytest.mark.parametrize(
    "content",
    [
        "[1]",
        "null",
        '"text"',
        "1",
        '{"seq": 1}',
        '{"seq": 1, "head_hash": 5, "time": "", "key_id": "", "signature": ""}',
    ],
)
def test_verify_refuses_a_checkpoint_file_that_is_not_a_checkpoint_object(
    controlplane: RunningControlPlane,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str,
) -> None:
    cp_file = tmp_path / "checkpoint.json"
    cp_file.write_text(content)
    code, _, err = cli(controlplane, capsys, "audit", "verify", "--checkpoint", str(cp_file))
    assert code == 2 and "not a checkpoint file" in err


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
