"""An approval for a target no policy governs would count for no gate: it is refused
(FAILED_PRECONDITION, TARGET_NOT_GOVERNED), naming the governed targets and the closest ones,
so a misspelt target is caught when it is typed rather than at the promotion."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane.errors import FailedPrecondition, InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import register_versions

APPROVED = 'approvals.exists(a, a.decision == "approve")'


def test_an_approval_for_an_ungoverned_target_is_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client("alice") as a, controlplane.client("bob") as b:
        model_id, (v1,) = register_versions(a, tmp_path, 1)
        with pytest.raises(FailedPrecondition) as none_yet:
            b.approve(model_id, v1, "production")
        assert none_yet.value.reason == "TARGET_NOT_GOVERNED"
        assert "No target is governed yet" in none_yet.value.message
        assert "policies create" in none_yet.value.message

        a.create_policy("release", target="production", rules=[APPROVED])
        with pytest.raises(FailedPrecondition) as typo:
            b.approve(model_id, v1, "prodution", comment="ok")
        assert typo.value.reason == "TARGET_NOT_GOVERNED"
        assert "Did you mean 'production'?" in typo.value.message
        assert typo.value.metadata["target"] == "prodution"
        assert typo.value.metadata["suggestions"] == "production"
        assert list(b.list_approvals(model_id, v1)) == []

        # The governed target takes it, and its gate counts it.
        assert b.approve(model_id, v1, "production").target == "production"
        assert a.evaluate_gate(model_id, v1, "production").passed

        # A deployment's own policy governs that deployment only.
        dep = unique("d")
        a.create_policy("one-deployment", target=f"deployments/{dep}", rules=[APPROVED])
        assert b.approve(model_id, v1, f"deployments/{dep}").decision == "approve"
        with pytest.raises(FailedPrecondition) as other:
            b.approve(model_id, v1, f"deployments/{dep}x")
        assert other.value.reason == "TARGET_NOT_GOVERNED"
        assert f"Did you mean 'deployments/{dep}'?" in other.value.message
        assert "Governed targets: deployments/" in other.value.message

        # A reject is refused as an approve is: neither would count anywhere.
        with pytest.raises(FailedPrecondition):
            b.approve(model_id, v1, "staging", decision="reject")
        # A malformed target is still INVALID_ARGUMENT.
        with pytest.raises(InvalidArgument):
            b.approve(model_id, v1, "deployments/a/b")


def test_the_cli_says_which_targets_are_governed(
    controlplane: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(controlplane.address, capsys)
    with controlplane.client("alice") as a:
        model_id, (v1,) = register_versions(a, tmp_path, 1)
        a.create_policy("release", target="production", rules=[APPROVED])
    code, out, err = cli.run(
        *("--roles", "approver,risk", "approve", model_id, str(v1), "--target", "prodution"),
        principal="carol",
    )
    assert code != 0 and out == ""
    assert "FAILED_PRECONDITION (TARGET_NOT_GOVERNED)" in err
    assert "Did you mean 'production'?" in err
