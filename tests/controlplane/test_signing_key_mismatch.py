"""A database restored without ``ARTIFACT_ROOT/keys/``: the server would generate a new signing
key, and every approval the old key signed would fail verification. It refuses to start
instead (SIGNING_KEY_MISMATCH), naming both keys, and leaves no new key behind; the old key
restored, or its public key given with --verification-keys, lets it start. With both lost, a
new key named with --signing-key starts, with a warning naming the approvals' key."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.audit import key_id, load_signing_key
from modelplane import Client
from modelplane.testing.processes import Server, controlplane
from tests.controlplane.conftest import TrainedModel, serve_refused
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE

KEY = Path("artifacts") / "keys" / "signing-key.pem"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel) -> Template:
    """One SQLite registry made by :func:`_made_approved`, which each SQLite test copies (a
    restore, as the tests stand for) instead of making its own."""
    folder = tmp_path_factory.mktemp("approved")
    old_id, pem = _made_approved(folder, f"sqlite:///{folder / 'cp.db'}", trained_model)
    return Template(folder, old_id, pem)


@dataclass(frozen=True)
class Template:
    folder: Path
    key_id: str
    pem: str


def _approved(tmp: Path, db: str, template: Template, trained: TrainedModel) -> tuple[str, str]:
    """The registry of :func:`_made_approved` on ``db`` with ``tmp/artifacts``: copied from
    ``template`` for SQLite, made anew on PostgreSQL."""
    if not db.startswith("sqlite:///"):
        return _made_approved(tmp, db, trained)
    target = Path(db.removeprefix("sqlite:///"))
    for suffix in ("", "-wal"):
        source = template.folder / f"cp.db{suffix}"
        if source.exists():
            shutil.copyfile(source, f"{target}{suffix}")
    shutil.copytree(template.folder / "artifacts", tmp / "artifacts")
    return template.key_id, template.pem


def _made_approved(tmp: Path, db: str, trained: TrainedModel) -> tuple[str, str]:
    """A registry on ``db`` whose version 1 of m1 holds a risk approval; the approval's key id
    and the public key PEM as `modelplane keys show` prints it."""
    server = controlplane(tmp, db).start()
    try:
        with Client(server.address, principal="alice") as c:
            register(c, trained, "m1")
            c.create_policy("release", target="production", rules=[RISK_RULE])
        with Client(server.address, principal="rita") as rita:
            approval = rita.with_roles(["risk"]).approve("m1", 1, "production")
            pem = rita.public_key().pem
    finally:
        server.stop()
    return approval.key_id, pem


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_database_restored_without_its_key_is_refused(
    own_db: str, tmp_path: Path, template: Template, trained_model: TrainedModel
) -> None:
    # One process on SQLite, the supervisor of --workers on PostgreSQL: both paths and both
    # backends, at half the cost of every pairing.
    workers = ["--workers", "2"] if own_db.startswith("postgresql") else []
    old_id, pem = _approved(tmp_path, own_db, template, trained_model)
    kept = tmp_path / "old-signing-key.pem"
    shutil.move(tmp_path / KEY, kept)  # the database and blobs restored, keys/ not
    seen = set()
    for _ in range(2):  # and the next start is refused alike
        result = serve_refused(tmp_path, "--listen", "127.0.0.1:0", *workers, db=own_db)
        line = _error_line(result.stderr)
        assert result.returncode == 2, result.stderr
        assert "(SIGNING_KEY_MISMATCH)" in line
        assert f"1 approval signed by key {old_id}" in line
        assert str(tmp_path / KEY) in line and "--verification-keys" in line
        # The way out when both the key and its public key are lost.
        assert "openssl genpkey -algorithm ed25519 -out FILE`, then --signing-key FILE" in line
        assert "those approvals no longer count: they must be given again" in line
        assert "The new key was removed" in line
        new_id = line.split("a new one (", 1)[1].split(")", 1)[0]
        assert new_id != old_id and new_id not in seen
        seen.add(new_id)
        assert not (tmp_path / KEY).exists()

    # Its public key kept as a verification key: the server starts with a new key, and the
    # approval verifies as signed by a retired key.
    retired = tmp_path / "retired"
    retired.mkdir()
    (retired / "old.pem").write_text(pem)
    server = controlplane(
        tmp_path, own_db, name="rotated", extra=("--verification-keys", str(retired))
    ).start()
    try:
        with Client(server.address, principal="rita") as c:
            assert c.public_key().key_id != old_id
            checks = {ch.resource: ch for ch in c.verify_version("m1", 1).checks}
            approvals = [ch for name, ch in checks.items() if "/approvals/" in name]
            assert [ch.message for ch in approvals] == [
                f"signature valid (signed by retired key {old_id})"
            ]
    finally:
        server.stop()

    # The key itself restored: it signs again.
    shutil.copyfile(kept, tmp_path / KEY)
    server = controlplane(tmp_path, own_db, name="restored").start()
    try:
        with Client(server.address, principal="rita") as c:
            assert c.public_key().key_id == old_id
            assert c.verify_version("m1", 1).ok
    finally:
        server.stop()


def test_a_new_artifact_root_over_a_database_with_approvals_starts_with_a_warning(
    tmp_path: Path, template: Template, trained_model: TrainedModel
) -> None:
    """A root with no blobs yet is a new one, not a restored one (a database shared with
    another root, as tests on one PostgreSQL database do): the start goes on, and the log says
    which approvals will not verify."""
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    old_id, _ = _approved(tmp_path, db, template, trained_model)
    other = tmp_path / "other"
    other.mkdir()
    server = controlplane(other, db).start()
    try:
        with Client(server.address, principal="rita") as c:
            new_id = c.public_key().key_id
    finally:
        server.stop()
    assert new_id == key_id(load_signing_key(other / KEY))
    warned = [
        e for e in server.json_lines() if e.get("level") == "warning" and "approval_key_ids" in e
    ]
    assert [(e["key_id"], e["approval_key_ids"], e["approvals"]) for e in warned] == [
        (new_id, [old_id], 1)
    ]


def test_an_explicit_key_is_used_as_named(
    tmp_path: Path, template: Template, trained_model: TrainedModel
) -> None:
    """A key named with --signing-key is the operator's choice: it is used, without a check
    that refuses."""
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    old_id, _ = _approved(tmp_path, db, template, trained_model)
    (tmp_path / KEY).unlink()
    new = tmp_path / "new.pem"
    new.write_bytes(_fresh_key_pem())
    server = controlplane(tmp_path, db, name="explicit", extra=("--signing-key", str(new)))
    server.start()
    try:
        with Client(server.address, principal="rita") as c:
            assert c.public_key().key_id == key_id(load_signing_key(new)) != old_id
    finally:
        server.stop()
    assert new.exists() and not (tmp_path / KEY).exists()


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_new_explicit_key_over_approvals_it_cannot_verify_starts_with_a_warning(
    tmp_path: Path, template: Template, trained_model: TrainedModel, workers: list[str]
) -> None:
    """Key and public key both lost: a new key named with --signing-key starts (the loss
    accepted), the log names the approvals' key and how many there are, once with --workers
    too; approvals given again count."""
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    old_id, _ = _approved(tmp_path, db, template, trained_model)
    shutil.rmtree(tmp_path / KEY.parent)
    new = tmp_path / "new.pem"
    new.write_bytes(_fresh_key_pem())
    new_id = key_id(load_signing_key(new))
    server = controlplane(
        tmp_path, db, name="lost", extra=("--signing-key", str(new), *workers)
    ).start()
    try:
        with Client(server.address, principal="rita") as c:
            assert c.public_key().key_id == new_id
            assert not c.verify_version("m1", 1).ok
            assert not c.evaluate_gate("m1", 1, "production").passed
            c.with_roles(["risk"]).approve("m1", 1, "production")
            assert c.evaluate_gate("m1", 1, "production").passed
    finally:
        server.stop()
    assert _unverifiable_warnings(server) == [(new_id, [old_id], 1)]


def test_a_default_key_already_there_that_signed_no_approval_starts_with_a_warning(
    tmp_path: Path, template: Template, trained_model: TrainedModel
) -> None:
    """A first start on a new host generated a default key; then the database was restored
    there without the old key: the key is used (it was already there), and the log names the
    approvals it cannot verify, as for a key named with --signing-key."""
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    old_id, _ = _approved(tmp_path, db, template, trained_model)
    kept = (tmp_path / KEY).read_bytes()
    (tmp_path / KEY).write_bytes(_fresh_key_pem())
    new_id = key_id(load_signing_key(tmp_path / KEY))
    server = controlplane(tmp_path, db, name="new-host").start()
    try:
        with Client(server.address, principal="rita") as c:
            assert c.public_key().key_id == new_id
            assert not c.verify_version("m1", 1).ok
    finally:
        server.stop()
    assert _unverifiable_warnings(server) == [(new_id, [old_id], 1)]
    # The key that signed them, back in its place: no warning.
    (tmp_path / KEY).write_bytes(kept)
    server = controlplane(tmp_path, db, name="same-key").start()
    server.stop()
    assert any(e.get("event") == "audit signing key" for e in server.json_lines())
    assert _unverifiable_warnings(server) == []


def test_an_explicit_key_that_verifies_every_approval_starts_without_a_warning(
    tmp_path: Path, template: Template, trained_model: TrainedModel
) -> None:
    """The key that signed the approvals named with --signing-key, or a new one with the old
    public key given with --verification-keys (a rotation): no warning."""
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    _, pem = _approved(tmp_path, db, template, trained_model)
    retired = tmp_path / "retired"
    retired.mkdir()
    (retired / "old.pem").write_text(pem)
    new = tmp_path / "new.pem"
    new.write_bytes(_fresh_key_pem())
    for name, extra in [
        ("same", ("--signing-key", str(tmp_path / KEY))),
        ("rotated", ("--signing-key", str(new), "--verification-keys", str(retired))),
    ]:
        server = controlplane(tmp_path, db, name=name, extra=extra).start()
        try:
            with Client(server.address, principal="rita") as c:
                assert c.verify_version("m1", 1).ok
        finally:
            server.stop()
        assert any(e.get("event") == "audit signing key" for e in server.json_lines())
        assert _unverifiable_warnings(server) == []


def _unverifiable_warnings(server: Server) -> list[tuple[str, list[str], int]]:
    """The server's warnings about approvals it cannot verify: (its key id, the approvals' key
    ids, how many approvals)."""
    return [
        (e["key_id"], e["approval_key_ids"], e["approvals"])
        for e in server.json_lines()
        if e.get("level") == "warning" and "approval_key_ids" in e
    ]


def _fresh_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
