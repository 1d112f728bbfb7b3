"""The model card of a version approved under a signing key that has since been rotated:
real servers on one SQLite file, the old key's public key kept with --verification-keys. The
card says which approvals a retired key signed, as `versions verify` does."""

from __future__ import annotations

import json
from pathlib import Path

from controlplane.audit import key_id, load_or_create_signing_key
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel, _start
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE


def test_the_card_names_the_retired_key_an_approval_was_signed_by(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    old_key, new_key = tmp_path / "old.pem", tmp_path / "new.pem"
    old_id, new_id = (key_id(load_or_create_signing_key(p)) for p in (old_key, new_key))
    retired = tmp_path / "retired"
    retired.mkdir()
    model_id, target = unique(), unique("prod")

    cp = _start(tmp_path, db, signing_key=str(old_key))
    try:
        with cp.client("alice") as alice:
            version = register(alice, trained_model, model_id)
            alice.create_policy(unique("p"), target=target, rules=[RISK_RULE])
        with cp.client("rita") as rita:
            old = rita.with_roles(["risk"]).approve(model_id, version, target)
            assert old.key_id == old_id
            (retired / "old.pem").write_text(rita.public_key().pem)
    finally:
        cp.handle.stop(0)

    cp = _start(tmp_path, db, signing_key=str(new_key), verification_keys=str(retired))
    try:
        with cp.client("sam") as sam:
            new = sam.with_roles(["ml"]).approve(model_id, version, target)
            assert new.key_id == new_id
            checks = {ch.resource: ch for ch in sam.verify_version(model_id, version).checks}
            note = f"(signed by retired key {old_id})"
            assert checks[old.name].message == f"signature valid {note}"
            card = json.loads(sam.model_card(model_id, version, format="json").content)
            signatures = {a["name"]: a["signature"] for a in card["approvals"]}
            assert signatures == {old.name: f"valid {note}", new.name: "valid"}
            for fmt in ("md", "html"):
                content = sam.model_card(model_id, version, format=fmt).content
                assert f"valid {note}" in content, fmt
    finally:
        cp.handle.stop(0)
