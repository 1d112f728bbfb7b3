"""The model card of a version approved under a signing key that has since been rotated:
real servers on one SQLite file, the old key's public key kept with --verification-keys. The
card says which approvals a retired key signed, as `versions verify` does."""

from __future__ import annotations

import json
from pathlib import Path

from tests.controlplane.conftest import TrainedModel, start_controlplane
from tests.controlplane.test_signing_keys import approved_under_an_old_key


def test_the_card_names_the_retired_key_an_approval_was_signed_by(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    with (
        approved_under_an_old_key(tmp_path, trained_model) as (cp, rotated),
        cp.client("rita") as rita,
    ):
        (rotated.retired / "old.pem").write_text(rita.public_key().pem)
    model_id, version, target = rotated.model_id, rotated.version, rotated.target
    old, old_id, new_id = rotated.approval, rotated.old_id, rotated.new_id

    cp = start_controlplane(
        tmp_path,
        rotated.db,
        signing_key=str(rotated.new_key),
        verification_keys=str(rotated.retired),
    )
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
