"""`modelplane audit verify --export FILE`: an export checked without the server, by the code
the server hashes with, naming the first line of every kind of tampering."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit import AuditEvent, _canonical
from modelplane import audit_chain
from modelplane.audit_chain import GENESIS_HASH, HASHED_FIELDS, event_hash
from modelplane.cli import main
from modelplane.v1 import audit_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane

#: Nothing listens here: offline verification must not need a server.
NO_SERVER = "127.0.0.1:9"

Lines = list[bytes]


def verify(
    capsys: pytest.CaptureFixture[str], *argv: str, output: str = "json"
) -> tuple[int, Any, str]:
    """Run ``audit verify`` against no server; the JSON document (or table text) and stderr."""
    capsys.readouterr()
    code = main(["--server", NO_SERVER, "--output", output, "audit", "verify", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if output == "json" and out else out, err


def history(cp: RunningControlPlane, trained_model: TrainedModel) -> None:
    """Models, versions, updates and a policy by two people."""
    with cp.client("alice") as alice:
        for _ in range(2):
            model = unique()
            alice.create_model(model, description="scores")
            alice.register_version(model, trained_model.onnx, capture_env=False)
            alice.update_model(model, description="ünïcode ✓")
    with cp.client("bob") as bob:
        bob.create_policy(unique("p"), target=unique("t"), rules=["true"])


def export(cp: RunningControlPlane, path: Path) -> Lines:
    with cp.client("auditor") as c, path.open("wb") as f:
        c.export_audit(f)
    return path.read_bytes().splitlines(keepends=True)


def checkpointed(cp: RunningControlPlane, folder: Path) -> tuple[audit_pb2.Checkpoint, Path, Path]:
    """A signed checkpoint of ``cp``'s chain now, saved in ``folder/head.json`` with the
    fields ``audit checkpoint --out`` writes, and the server's public key as ``keys show``
    prints it in ``folder/server.pem``: the checkpoint and the two files."""
    with cp.client("auditor") as c:
        saved = c.create_checkpoint()
        key = c.public_key()
    checkpoint = folder / "head.json"
    fields = ("seq", "head_hash", "time", "key_id", "signature")
    checkpoint.write_text(json.dumps({k: getattr(saved, k) for k in fields}))
    public_key = folder / "server.pem"
    public_key.write_text(f"# key id {key.key_id} ({key.algorithm})\n{key.pem}")
    return saved, checkpoint, public_key


def delete_events(cp: RunningControlPlane, where: str, *params: object) -> None:
    """Delete the audit events ``where`` selects straight from ``cp``'s SQLite file."""
    with sqlite3.connect(cp.db_url.removeprefix("sqlite:///")) as conn:
        conn.execute(f"DELETE FROM audit_events WHERE {where}", params)


@dataclass
class Exported:
    cp: RunningControlPlane
    export: Path
    lines: Lines
    checkpoint: Path
    checkpoint_seq: int
    public_key: Path
    folder: Path

    def write(self, name: str, lines: Lines | bytes) -> str:
        path = self.folder / name
        path.write_bytes(lines if isinstance(lines, bytes) else b"".join(lines))
        return str(path)


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel
) -> Iterator[Exported]:
    """A control plane with some history, a signed checkpoint of it, more history after the
    checkpoint, the export of it all and the server's public key as ``keys show`` prints it."""
    folder = tmp_path_factory.mktemp("audit-export")
    cp = start_controlplane(folder, f"sqlite:///{folder / 'cp.db'}")
    try:
        history(cp, trained_model)
        saved, checkpoint, public_key = checkpointed(cp, folder)
        history(cp, trained_model)
        lines = export(cp, folder / "audit.jsonl")
        yield Exported(cp, folder / "audit.jsonl", lines, checkpoint, saved.seq, public_key, folder)
    finally:
        cp.handle.stop(0)


def event(line: bytes) -> dict[str, Any]:
    return dict(json.loads(line))


def line_of(fields: dict[str, Any], rehash: bool = False) -> bytes:
    if rehash:
        fields = {**fields, "hash": event_hash({k: fields[k] for k in HASHED_FIELDS})}
    return (json.dumps(fields, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def test_the_server_hashes_with_the_client_packages_code() -> None:
    assert _canonical.event_hash is audit_chain.event_hash
    assert _canonical.canonical_json is audit_chain.canonical_json
    from datetime import UTC, datetime

    e = AuditEvent(1, datetime.now(UTC), "a", "b", "c", "d", "", "", GENESIS_HASH, "")
    assert tuple(e.hashed_fields()) == HASHED_FIELDS


def test_an_intact_export_verifies_offline_as_the_server_verifies_it(
    controlplane_any: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    history(controlplane_any, trained_model)
    target = tmp_path / "audit.jsonl"
    capsys.readouterr()
    argv = ["--server", controlplane_any.address, "--as", "auditor", "audit", "export"]
    assert main([*argv, "--out", str(target)]) == 0
    with controlplane_any.client("auditor") as c:
        server = c.verify_audit()
    assert server.ok

    code, doc, err = verify(capsys, "--export", str(target))
    assert code == 0, err
    assert doc["ok"] is True and doc["problem"] == "" and doc["first_bad_line"] is None
    assert (doc["head_seq"], doc["head_hash"], doc["checked"]) == (
        server.head_seq,
        server.head_hash,
        server.checked,
    )
    assert doc["lines"] == doc["checked"] and doc["first_seq"] == 1
    # What it shows, and what it cannot, said as the server's verify says it of its chain.
    n = server.head_seq
    assert doc["message"].startswith(
        f"the export is intact ({n} events, head event {n}) {audit_chain.CHAIN_ALONE}; "
    )
    assert server.message == audit_chain.intact_message("the chain", n, n)
    assert "removed from its end cannot be detected" not in doc["message"]
    assert "--checkpoint" in doc["message"] and "modelplane audit checkpoint" in doc["message"]
    code, table, _ = verify(capsys, "--export", str(target), output="table")
    assert code == 0 and "True" in table and "intact" in table


@pytest.mark.parametrize(
    ("tamper", "problem", "line", "seq"),
    [
        pytest.param(
            lambda ls: [*ls[:2], line_of({**event(ls[2]), "actor": "mallory"}), *ls[3:]],
            "EVENT_ALTERED",
            3,
            3,
            id="field-altered",
        ),
        pytest.param(
            lambda ls: [*ls[:2], line_of({**event(ls[2]), "hash": "f" * 64}), *ls[3:]],
            "EVENT_ALTERED",
            3,
            3,
            id="hash-altered",
        ),
        pytest.param(
            lambda ls: [
                *ls[:2],
                line_of({**event(ls[2]), "resource": "models/forged"}, rehash=True),
                *ls[3:],
            ],
            "CHAIN_BROKEN",
            4,
            4,
            id="event-replaced-and-rehashed",
        ),
        pytest.param(
            lambda ls: [line_of({**event(ls[0]), "prev_hash": "1" * 64}, rehash=True), *ls[1:]],
            "CHAIN_BROKEN",
            1,
            1,
            id="first-not-from-genesis",
        ),
        pytest.param(lambda ls: [*ls[:2], *ls[3:]], "EVENT_MISSING", 3, 3, id="deleted"),
        pytest.param(
            lambda ls: ls[:-2] + ls[-1:], "EVENT_MISSING", -2, -2, id="deleted-last-but-one"
        ),
        pytest.param(
            lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], "EVENT_OUT_OF_ORDER", 3, 4, id="reordered"
        ),
        pytest.param(
            lambda ls: [*ls[:3], ls[2], *ls[3:]], "EVENT_DUPLICATED", 4, 3, id="duplicated-line"
        ),
        pytest.param(
            lambda ls: [*ls, ls[1]], "EVENT_DUPLICATED", 0, 2, id="old-line-appended-again"
        ),
        pytest.param(
            lambda ls: [
                *ls[:4],
                line_of({**event(ls[1]), "action": "DeleteModel"}, rehash=True),
                *ls[4:],
            ],
            "EVENT_INSERTED",
            5,
            2,
            id="inserted-under-a-used-seq",
        ),
        pytest.param(
            lambda ls: [
                *ls[:2],
                line_of({**event(ls[2]), "actor": "mallory"}, rehash=True),
                *ls[2:],
            ],
            "EVENT_INSERTED",
            4,
            3,
            id="inserted-before-the-original",
        ),
        pytest.param(
            lambda ls: [*ls[:2], line_of({**event(ls[2]), "seq": 0}), *ls[3:]],
            "EVENT_OUT_OF_RANGE",
            3,
            0,
            id="seq-below-one",
        ),
        pytest.param(lambda ls: [*ls, b"garbage\n"], "TRAILING_DATA", 0, None, id="trailing-junk"),
        pytest.param(lambda ls: [*ls, b"\n", b"\n"], "TRAILING_DATA", 0, None, id="blank-tail"),
        pytest.param(
            lambda ls: [*ls[:-1], ls[-1][: len(ls[-1]) // 2]],
            "LINE_TRUNCATED",
            -1,
            None,
            id="last-line-cut",
        ),
        pytest.param(
            lambda ls: [*ls[:2], b"not json at all\n", *ls[3:]], "NOT_JSON", 3, None, id="not-json"
        ),
        pytest.param(lambda ls: [*ls[:2], b"\n", *ls[2:]], "NOT_JSON", 3, None, id="blank-line"),
        pytest.param(
            lambda ls: [*ls[:2], b"\xff\xfe" + ls[2], *ls[3:]], "NOT_JSON", 3, None, id="not-utf8"
        ),
        pytest.param(
            lambda ls: [*ls[:2], line_of({**event(ls[2]), "note": "ok"}), *ls[3:]],
            "LINE_MALFORMED",
            3,
            3,
            id="unhashed-field-added",
        ),
        pytest.param(
            lambda ls: [
                *ls[:2],
                line_of({k: v for k, v in event(ls[2]).items() if k != "actor"}),
                *ls[3:],
            ],
            "LINE_MALFORMED",
            3,
            3,
            id="field-removed",
        ),
        pytest.param(
            lambda ls: [*ls[:2], line_of({**event(ls[2]), "seq": "3"}), *ls[3:]],
            "LINE_MALFORMED",
            3,
            None,
            id="seq-as-text",
        ),
        pytest.param(
            lambda ls: [
                *ls[:2],
                ls[2].replace(b'{"action"', b'{"actor": "mallory", "action"'),
                *ls[3:],
            ],
            "LINE_MALFORMED",
            3,
            None,
            id="field-given-twice",
        ),
        pytest.param(
            lambda ls: [*ls[:2], b"[1, 2]\n", *ls[3:]], "LINE_MALFORMED", 3, None, id="array"
        ),
        pytest.param(lambda ls: [], "EMPTY_EXPORT", None, None, id="empty-file"),
    ],
)
def test_tampering_is_reported_at_its_first_line(
    exported: Exported,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Lines], Lines],
    problem: str,
    line: int | None,
    seq: int | None,
) -> None:
    lines = exported.lines
    assert len(lines) >= 10
    tampered = tamper(list(lines))
    # Negative numbers count from the end of the original export; 0 is the line after it.
    if line is not None and line <= 0:
        line = len(lines) + line + 1
    if seq is not None and seq < 0:
        seq = len(lines) + seq + 1
    code, doc, err = verify(capsys, "--export", exported.write("tampered.jsonl", tampered))
    assert code == 1, err
    assert (doc["ok"], doc["problem"], doc["first_bad_line"], doc["first_bad_seq"]) == (
        False,
        problem,
        line,
        seq,
    ), doc["message"]
    if line is not None:
        assert f"audit export broken at line {line}:" in err
        assert f"line {line}" in doc["message"]
    assert doc["checked"] == (line - 1 if line else 0) or problem == "EMPTY_EXPORT"


def test_a_full_export_must_start_at_event_one(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = exported.write("from-three.jsonl", exported.lines[2:])
    code, doc, _ = verify(capsys, "--export", cut)
    assert code == 1
    assert (doc["problem"], doc["first_bad_line"], doc["first_bad_seq"]) == ("EVENT_MISSING", 1, 1)
    assert "starts at event 3, so events 1 to 2 are missing" in doc["message"]
    assert "from its first line on" in doc["message"] and "intact" in doc["message"]
    assert doc["first_seq"] == 3 and doc["checked"] == len(exported.lines) - 2
    assert doc["head_seq"] == len(exported.lines)

    # The rest is still checked from its first line on, and a later break is named.
    rest = exported.lines[2:]
    broken = [*rest[:3], line_of({**event(rest[3]), "actor": "mallory"}), *rest[4:]]
    code, doc, _ = verify(capsys, "--export", exported.write("from-three-bad.jsonl", broken))
    assert code == 1 and doc["first_bad_line"] == 1
    assert "line 4 (event 6" in doc["message"] and "was altered" in doc["message"]


def test_line_endings_and_a_missing_final_newline_do_not_matter(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    crlf = [line.replace(b"\n", b"\r\n") for line in exported.lines]
    crlf[-1] = crlf[-1].rstrip()
    code, doc, err = verify(capsys, "--export", exported.write("crlf.jsonl", crlf))
    assert code == 0 and doc["ok"], err


def test_a_checkpoint_is_checked_offline_with_the_servers_public_key(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, key, n = str(exported.checkpoint), str(exported.public_key), exported.checkpoint_seq
    assert 1 < n < len(exported.lines)
    code, doc, err = verify(
        capsys, "--export", str(exported.export), "--checkpoint", cp, "--public-key", key
    )
    assert code == 0, err
    assert doc["ok"] and doc["signature"] == "verified"
    total = len(exported.lines)
    assert doc["message"].startswith(
        f"the export is intact ({total} events, head event {total}): events 1 to {n} are as "
        "the checkpoint of "
    )
    assert f"the events after {n} hold together, which a later checkpoint" in doc["message"]
    assert audit_chain.CHAIN_ALONE not in doc["message"]

    # Without the key the checkpoint is compared, and the output says its signature was not.
    code, doc, _ = verify(capsys, "--export", str(exported.export), "--checkpoint", cp)
    assert code == 0 and doc["signature"] == "not_checked"
    assert "signature was not checked" in doc["message"]

    # Cut back behind the checkpoint: a consistent prefix only the checkpoint tells apart.
    short = exported.write("short.jsonl", exported.lines[: n - 2])
    code, doc, _ = verify(capsys, "--export", short)
    assert code == 0 and audit_chain.CHAIN_ALONE in doc["message"]
    code, doc, err = verify(capsys, "--export", short, "--checkpoint", cp, "--public-key", key)
    assert code == 1 and (doc["problem"], doc["first_bad_seq"]) == ("TRUNCATED", n - 1)
    assert doc["first_bad_line"] is None and doc["signature"] == "verified"
    # Cut from the end, or an event before removed and the rest renumbered and rehashed: the
    # export cannot tell which.
    assert f"the export ends at event {n - 2} (line {n - 2}) but the checkpoint" in doc["message"]
    assert (
        f"saw {n} events: 2 events are gone: events {n - 1} to {n} were cut from the end, or "
        f"events up to {n} were removed and those after them renumbered" in doc["message"]
    )
    assert "are not in it" not in doc["message"]
    one_short = exported.write("one-short.jsonl", exported.lines[: n - 1])
    code, doc, _ = verify(capsys, "--export", one_short, "--checkpoint", cp, "--public-key", key)
    assert code == 1 and (doc["problem"], doc["first_bad_seq"]) == ("TRUNCATED", n)
    assert (
        f"1 event is gone: event {n} was cut from the end, or events up to {n}" in (doc["message"])
    )
    assert f"events {n} to {n}" not in doc["message"]

    # Rewritten from event 2 on and re-hashed throughout, as a careful forger would.
    forged, prev = list(exported.lines[:1]), event(exported.lines[0])["hash"]
    for i, raw in enumerate(exported.lines[1:], 2):
        fields = {**event(raw), "prev_hash": prev}
        if i == 2:
            fields["resource"] = "models/forged"
        forged.append(line_of(fields, rehash=True))
        prev = event(forged[-1])["hash"]
    rewritten = exported.write("rewritten.jsonl", forged)
    code, doc, _ = verify(capsys, "--export", rewritten)
    assert code == 0
    code, doc, _ = verify(capsys, "--export", rewritten, "--checkpoint", cp, "--public-key", key)
    assert code == 1
    assert (doc["problem"], doc["first_bad_line"], doc["first_bad_seq"]) == (
        "CHECKPOINT_MISMATCH",
        n,
        n,
    )
    # Event 2 was changed, but all the checkpoint can show is that event n or one before it
    # was: the message places it so, as the server's verify does.
    assert "the export differs from the checkpoint of " in doc["message"]
    assert f"at or before event {n} (line {n}): the hash of event {n} is not" in doc["message"]
    assert "(which event cannot be told)" in doc["message"]
    assert "rewritten up to it" not in doc["message"]

    # One event removed, those after it renumbered and rehashed: the same, at the checkpoint.
    removed = [raw for i, raw in enumerate(exported.lines, 1) if i != 2]
    renumbered, prev = list(removed[:1]), event(removed[0])["hash"]
    for seq, raw in enumerate(removed[1:], 2):
        renumbered.append(line_of({**event(raw), "seq": seq, "prev_hash": prev}, rehash=True))
        prev = event(renumbered[-1])["hash"]
    gap = exported.write("renumbered.jsonl", renumbered)
    code, doc, _ = verify(capsys, "--export", gap)
    assert code == 0 and audit_chain.CHAIN_ALONE in doc["message"]
    code, doc, _ = verify(capsys, "--export", gap, "--checkpoint", cp, "--public-key", key)
    assert code == 1 and (doc["problem"], doc["first_bad_seq"]) == ("CHECKPOINT_MISMATCH", n)
    assert f"at or before event {n} (line {n})" in doc["message"]


def test_a_checkpoint_whose_signature_does_not_verify_is_not_trusted(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = json.loads(exported.checkpoint.read_text())
    # Claims the export reaches further than it does; signed by no one.
    forged = exported.folder / "forged.json"
    forged.write_text(json.dumps({**saved, "seq": saved["seq"] + 1000}))
    key = str(exported.public_key)
    code, doc, err = verify(
        capsys, "--export", str(exported.export), "--checkpoint", str(forged), "--public-key", key
    )
    assert code == 1
    assert (doc["problem"], doc["signature"]) == ("CHECKPOINT_SIGNATURE_INVALID", "invalid")
    assert "the export itself is intact" in doc["message"] and "does not verify" in err
    assert audit_chain.CHAIN_ALONE in doc["message"]
    assert doc["checked"] == len(exported.lines)

    other = Ed25519PrivateKey.generate().public_key()
    other_pem = exported.folder / "other.pem"
    other_pem.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, doc, _ = verify(
        capsys,
        "--export",
        str(exported.export),
        "--checkpoint",
        str(exported.checkpoint),
        "--public-key",
        str(other_pem),
    )
    assert code == 1 and doc["signature"] == "invalid"
    assert f"the checkpoint names key '{saved['key_id']}'" in doc["message"]

    # keys show --output json is read too.
    doc_key = exported.folder / "key.json"
    doc_key.write_text(json.dumps({"pem": exported.public_key.read_text().split("\n", 1)[1]}))
    code, doc, _ = verify(
        capsys,
        "--export",
        str(exported.export),
        "--checkpoint",
        str(exported.checkpoint),
        "--public-key",
        str(doc_key),
    )
    assert code == 0 and doc["signature"] == "verified"


def test_without_cryptography_the_signature_is_reported_unchecked(
    exported: Exported, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.exceptions", None)
    code, doc, _ = verify(
        capsys,
        "--export",
        str(exported.export),
        "--checkpoint",
        str(exported.checkpoint),
        "--public-key",
        str(exported.public_key),
    )
    assert code == 0 and doc["signature"] == "not_checked"
    assert "needs the cryptography package" in doc["message"]


def test_a_client_only_install_verifies_an_export(exported: Exported) -> None:
    """No controlplane, sqlmodel, sqlalchemy or cryptography importable: the light client."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('controlplane', 'sqlmodel', 'sqlalchemy',\n"
        "                                  'cryptography', 'numpy', 'pyarrow'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from modelplane.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["--server", NO_SERVER, "--output", "json", "audit", "verify"]
    argv += ["--export", str(exported.export), "--checkpoint", str(exported.checkpoint)]
    argv += ["--public-key", str(exported.public_key)]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["signature"] == "not_checked"


def test_usage_errors_exit_2(exported: Exported, capsys: pytest.CaptureFixture[str]) -> None:
    export, cp, key = str(exported.export), str(exported.checkpoint), str(exported.public_key)
    missing = str(exported.folder / "missing.jsonl")
    not_pem = exported.write("not.pem", b"hello\n")
    bad_cp = exported.write("bad-cp.json", b'{"seq": 1, "head_hash": "", "time": "noon",'
                            b' "key_id": "", "signature": ""}')  # fmt: skip
    for argv in (
        ["--export", missing],
        ["--export", str(exported.folder)],
        ["--export", export, "--checkpoint", missing],
        ["--export", export, "--checkpoint", bad_cp],
        ["--export", export, "--public-key", key],
        ["--export", export, "--checkpoint", cp, "--public-key", not_pem],
        ["--export", export, "--checkpoint", cp, "--public-key", missing],
        ["--public-key", key],
    ):
        code, out, err = verify(capsys, *argv)
        assert code == 2 and out == "" and err.startswith("error:"), (argv, err)


def test_offline_and_server_verify_name_the_same_deleted_event(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    history(controlplane, trained_model)
    delete_events(controlplane, "seq = 4")
    with controlplane.client("auditor") as c:
        server = c.verify_audit()
    export(controlplane, tmp_path / "audit.jsonl")
    code, doc, _ = verify(capsys, "--export", str(tmp_path / "audit.jsonl"))
    assert code == 1 and not server.ok
    assert (
        (doc["problem"], doc["first_bad_seq"])
        == (server.problem, server.first_bad_seq)
        == (
            "EVENT_MISSING",
            4,
        )
    )
    assert (doc["head_seq"], doc["head_hash"]) == (server.head_seq, server.head_hash)


def test_offline_and_server_verify_word_a_cut_tail_alike(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    history(controlplane, trained_model)
    saved, checkpoint, pem = checkpointed(controlplane, tmp_path)
    delete_events(controlplane, "seq > ?", saved.seq - 2)
    with controlplane.client("auditor") as c:
        server = c.verify_audit(saved)
    export(controlplane, tmp_path / "audit.jsonl")
    code, doc, _ = verify(
        capsys,
        "--export",
        str(tmp_path / "audit.jsonl"),
        "--checkpoint",
        str(checkpoint),
        "--public-key",
        str(pem),
    )
    assert code == 1 and not server.ok and doc["signature"] == "verified"
    assert (doc["problem"], doc["first_bad_seq"]) == (server.problem, server.first_bad_seq)
    assert server.problem == "TRUNCATED" and server.first_bad_seq == saved.seq - 1
    # The chain's and the export's messages differ only in what they name and where.
    assert server.message.startswith(f"the chain ends at event {saved.seq - 2} but ")
    assert doc["message"].startswith(f"the export ends at event {saved.seq - 2} (line ")
    said = server.message.split(" saw ", 1)[1]
    assert said == doc["message"].split(" saw ", 1)[1]
    assert said.startswith(f"{saved.seq} events: 2 events are gone: events {saved.seq - 1} to ")
