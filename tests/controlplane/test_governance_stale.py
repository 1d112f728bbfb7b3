"""A gate decision rests on everything its policy's rules can read: a withdrawn approval or a
label change after it passed keeps a governed alias from moving, and the model card marks such
a decision stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelplane.errors import FailedPrecondition
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_deployments_api import deployed
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE, evaluated


def test_withdrawn_approval_makes_a_passed_gate_stale(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    cp = controlplane_any
    model_id, version, _ = evaluated(cp, trained_model)
    with cp.client("alice") as alice:
        alice.create_policy(unique("p"), target="production", rules=[RISK_RULE])
    with cp.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, "production")
    with cp.client("alice") as alice:
        assert alice.evaluate_gate(model_id, version, "production").passed
    with cp.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, "production", decision="reject")
    with cp.client("alice") as alice:
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, "production", version)
        assert refused.value.reason == "GATE_FAILED"
        assert "evidence changed" in refused.value.message
        assert "approval" in refused.value.message
        assert not alice.evaluate_gate(model_id, version, "production").passed
        with pytest.raises(FailedPrecondition):
            alice.set_alias(model_id, "production", version)
    # Approving again and re-running the gate lets the alias move.
    with cp.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, "production")
    with cp.client("alice") as alice:
        assert alice.evaluate_gate(model_id, version, "production").passed
        moved = alice.set_alias(model_id, "production", version)
    assert moved.version == f"models/{model_id}/versions/{version}"


def test_label_change_makes_a_passed_gate_stale_and_a_description_does_not(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    cp = controlplane_any
    model_id = unique()
    with cp.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.update_version(model_id, version, labels={"reviewed": "yes"})
        alice.create_policy(unique("p"), target="staging", rules=['labels.reviewed == "yes"'])
        assert alice.evaluate_gate(model_id, version, "staging").passed
        # Rules cannot read the description: changing it leaves the decision current.
        alice.update_version(model_id, version, description="reviewed by the risk team")
        alice.set_alias(model_id, "staging", version)
        alice.delete_alias(model_id, "staging")
        alice.update_version(model_id, version, labels={"reviewed": "no"})
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, "staging", version)
        assert refused.value.reason == "GATE_FAILED"
        assert "labels changed" in refused.value.message
        assert not alice.evaluate_gate(model_id, version, "staging").passed


def _card(cp: RunningControlPlane, model_id: str, version: int) -> tuple[dict[str, Any], str]:
    with cp.client("alice") as alice:
        data = json.loads(alice.model_card(model_id, version, format="json").content)
        md = alice.model_card(model_id, version, format="md").content
    return data, md


def test_model_card_marks_stale_decisions_and_withdrawn_approvals(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, version, _ = evaluated(controlplane, trained_model)
    with controlplane.client("alice") as alice:
        alice.create_policy(
            unique("p"), target="production", rules=["metrics.roc_auc >= 0.5", RISK_RULE]
        )
    with controlplane.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, "production")
    with controlplane.client("alice") as alice:
        passed = alice.evaluate_gate(model_id, version, "production")
    assert passed.passed
    data, md = _card(controlplane, model_id, version)
    (decision,) = data["gate_decisions"]
    assert decision["current"] is True and decision["evaluation"] == passed.evaluation
    assert [a["current"] for a in data["approvals"]] == [True]
    assert "| production | " in md and "stale" not in md

    with controlplane.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, "production", decision="reject")
    data, md = _card(controlplane, model_id, version)
    (decision,) = data["gate_decisions"]
    assert decision["passed"] is True and decision["current"] is False
    # Newest first: the reject stands, the approve it withdrew does not.
    assert [(a["decision"], a["current"]) for a in data["approvals"]] == [
        ("reject", True),
        ("approve", False),
    ]
    gate_row = next(line for line in md.splitlines() if line.startswith("| production | p"))
    assert "| yes | no: stale" in gate_row
    assert "no longer lets its alias move" in md

    # A new evaluation: the decision names the evaluation it rested on, now superseded.
    with controlplane.client("alice") as alice:
        alice.operation_result(
            alice.evaluate(model_id, version, trained_model.holdout, label="target")
        )
    data, _ = _card(controlplane, model_id, version)
    (decision,) = data["gate_decisions"]
    assert decision["current"] is False and decision["evaluation"] == passed.evaluation
    assert data["evaluation"]["name"] != passed.evaluation
    assert not any(a["current"] for a in data["approvals"])


def test_label_change_after_a_passed_gate_keeps_a_rollout_from_starting(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        dep, versions = deployed(c, tmp_path)
        target = f"deployments/{dep}"
        c.create_policy(unique("p"), target=target, rules=['labels.ok == "yes"'])
        model_id = c.get_deployment(dep).model.split("/")[1]
        c.update_version(model_id, versions[1], labels={"ok": "yes"})
        assert c.evaluate_gate(model_id, versions[1], target).passed
        c.update_version(model_id, versions[1], labels={"ok": "no"})
        with pytest.raises(FailedPrecondition) as refused:
            c.start_rollout(dep, versions[1])
        assert refused.value.reason == "GATE_FAILED"
        assert "evidence changed" in refused.value.message
