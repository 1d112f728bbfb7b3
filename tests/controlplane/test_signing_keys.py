"""The server's signing key: a key named explicitly must exist, and a rotated key keeps what
its predecessor signed valid when the predecessor's public key is given as a verification key.
Real servers on one SQLite file, the CLI, and keys made as an operator makes them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.audit import key_id, load_or_create_signing_key
from modelplane import Client
from modelplane.cli import main
from modelplane.testing.processes import controlplane
from modelplane.v1 import governance_pb2
from tests.conftest import unique
from tests.controlplane.conftest import (
    RunningControlPlane,
    TrainedModel,
    serve_refused,
    start_controlplane,
)
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_an_explicit_signing_key_that_is_missing_stops_the_server(
    tmp_path: Path, workers: list[str]
) -> None:
    typo = tmp_path / "keys-typo" / "signing-key.pem"
    result = serve_refused(tmp_path, "--signing-key", str(typo), *workers)
    line = _error_line(result)
    assert result.returncode == 2, result.stderr
    assert "(SIGNING_KEY_MISSING)" in line and str(typo) in line
    # It says how to make one, and where one would be made for it.
    assert f"openssl genpkey -algorithm ed25519 -out {typo}" in line
    assert "ARTIFACT_ROOT/keys/signing-key.pem" in line
    # No key was made in its place, nor at the default place.
    assert not typo.parent.exists()
    assert not (tmp_path / "artifacts" / "keys").exists()


def test_a_key_made_with_openssl_is_used_and_its_id_logged(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    server = controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", extra=("--signing-key", str(path))
    ).start()
    try:
        with Client(server.address, principal="alice") as c:
            kid = c.public_key().key_id
    finally:
        server.stop()
    assert kid == key_id(load_or_create_signing_key(path))
    # The key id is logged at start, so that replicas given different keys can be told apart.
    started = [e for e in server.json_lines() if e.get("event") == "audit signing key"]
    assert [(e["key_id"], e["path"]) for e in started] == [(kid, str(path))]


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot be read"), ("not a key", "is not a PEM key"), ("private-rsa", "no Ed25519")],
)
def test_a_verification_key_folder_that_cannot_be_used_stops_the_server(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    folder = tmp_path / "retired"
    if content is not None:
        folder.mkdir()
        if content == "private-rsa":
            subprocess.run(
                ["openssl", "genpkey", "-algorithm", "rsa", "-out", str(folder / "old.pem")],
                check=True,
                capture_output=True,
            )
        else:
            (folder / "old.pem").write_text(content)
    result = serve_refused(tmp_path, "--verification-keys", str(folder))
    line = _error_line(result)
    assert result.returncode == 2 and "(VERIFICATION_KEY_INVALID)" in line, result.stderr
    assert problem in line and str(folder) in line


def _cli(
    cp: RunningControlPlane, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--server", cp.address, "--as", "ops", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@dataclass(frozen=True)
class OldKeyApproval:
    """A registry on the SQLite file ``db`` whose version ``version`` of ``model_id`` holds a
    risk approval for ``target`` signed by an old key (``old_id``); ``new_key`` is to replace it,
    and ``retired`` is an empty folder for the old public key."""

    db: str
    new_key: Path
    old_id: str
    new_id: str
    retired: Path
    model_id: str
    target: str
    version: int
    approval: governance_pb2.Approval


@contextmanager
def approved_under_an_old_key(
    tmp: Path, trained: TrainedModel
) -> Iterator[tuple[RunningControlPlane, OldKeyApproval]]:
    """A server signing with an old key, in which a version was given a risk approval it
    signed, for the ``with`` block (stopped after it); the server and what it holds."""
    db = f"sqlite:///{tmp / 'cp.db'}"
    old_key, new_key = tmp / "old.pem", tmp / "new.pem"
    old_id, new_id = (key_id(load_or_create_signing_key(p)) for p in (old_key, new_key))
    retired = tmp / "retired"
    retired.mkdir()
    model_id, target = unique(), unique("prod")
    cp = start_controlplane(tmp, db, signing_key=str(old_key))
    try:
        with cp.client("alice") as alice:
            version = register(alice, trained, model_id)
            alice.create_policy(unique("p"), target=target, rules=[RISK_RULE])
        with cp.client("rita") as rita:
            approval = rita.with_roles(["risk"]).approve(model_id, version, target)
        assert approval.key_id == old_id
        made = OldKeyApproval(
            db, new_key, old_id, new_id, retired, model_id, target, version, approval
        )
        yield cp, made
    finally:
        cp.handle.stop(0)


def test_a_rotated_key_keeps_earlier_approvals_and_checkpoints_valid(
    tmp_path: Path, trained_model: TrainedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "old.json"
    # Signed with the old key: a risk approval that lets the gate pass, and a checkpoint.
    with approved_under_an_old_key(tmp_path, trained_model) as (cp, rotated):
        db, new_key, retired = rotated.db, rotated.new_key, rotated.retired
        model_id, version, target = rotated.model_id, rotated.version, rotated.target
        approval, old_id, new_id = rotated.approval, rotated.old_id, rotated.new_id
        with cp.client("rita") as rita:
            assert rita.evaluate_gate(model_id, version, target).passed
        # The public key as `keys show` prints it is what the operator keeps.
        code, shown, _ = _cli(cp, capsys, "keys", "show")
        assert code == 0
        (retired / "old.pem").write_text(shown)
        assert _cli(cp, capsys, "audit", "checkpoint", "--out", str(checkpoint))[0] == 0

    # The new key signs; the old one verifies.
    cp = start_controlplane(tmp_path, db, signing_key=str(new_key), verification_keys=str(retired))
    try:
        with cp.client("rita") as rita:
            assert rita.public_key().key_id == new_id
            assert rita.evaluate_gate(model_id, version, target).passed
            checks = {ch.resource: ch for ch in rita.verify_version(model_id, version).checks}
            assert checks[approval.name].ok
            assert (
                checks[approval.name].message == f"signature valid (signed by retired key {old_id})"
            )
            card = json.loads(rita.model_card(model_id, version, format="json").content)
            assert card["approvals"][0]["signature"] == f"valid (signed by retired key {old_id})"
        with cp.client("sam") as sam:
            assert sam.with_roles(["ml"]).approve(model_id, version, target).key_id == new_id
        verify = ("--output", "json", "audit", "verify", "--checkpoint", str(checkpoint))
        code, out, _ = _cli(cp, capsys, *verify)
        doc = json.loads(out)
        assert code == 0 and doc["ok"], out
        assert f"signed by retired key {old_id}" in doc["message"]
        code, out, _ = _cli(cp, capsys, "versions", "verify", model_id, str(version))
        assert code == 0 and f"retired key {old_id}" in out
    finally:
        cp.handle.stop(0)

    # Without the old public key, what it signed no longer verifies, and the messages name
    # both keys.
    cp = start_controlplane(tmp_path, db, signing_key=str(new_key))
    try:
        with cp.client("rita") as rita:
            assert not rita.evaluate_gate(model_id, version, target).passed
            checks = {ch.resource: ch for ch in rita.verify_version(model_id, version).checks}
            assert not checks[approval.name].ok
            assert old_id in checks[approval.name].message
            assert new_id in checks[approval.name].message
            assert "--verification-keys" in checks[approval.name].message
        code, out, err = _cli(cp, capsys, *verify)
        doc = json.loads(out)
        assert code == 1 and doc["problem"] == "CHECKPOINT_SIGNATURE_INVALID", out
        assert doc["message"] in err
        assert f"it names key {old_id}" in doc["message"]
        assert f"this server's key is {new_id}" in doc["message"]
        assert "--verification-keys" in doc["message"]
        assert "altered or signed by another key" not in doc["message"]
    finally:
        cp.handle.stop(0)
