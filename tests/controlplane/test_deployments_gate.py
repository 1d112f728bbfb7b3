"""The gate of a policy bound to ``deployments/{d}``, through a real control plane: creating
the deployment needs it, and so does every promotion of a rollout, since approvals may be
withdrawn and policies tightened after the rollout started. A person's promote is refused; the
automatic promotion after the last canary step pauses the rollout instead, once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from modelplane.errors import FailedPrecondition, NotFound
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import (
    Sidecar,
    drive,
    register_versions,
    state_of,
)

APPROVED = 'approvals.exists(a, a.decision == "approve")'
FAST = {"step_duration": 0.3, "min_requests": 50}


def test_create_deployment_needs_the_gate_of_a_policy_bound_to_it(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client("alice") as a:
        model_id, versions = register_versions(a, tmp_path, 1)
        dep = unique("d")
        target = f"deployments/{dep}"
        a.create_policy(unique("p"), target=target, rules=['labels.ok == "yes"'])
        with pytest.raises(FailedPrecondition) as refused:
            a.create_deployment(dep, model=model_id, champion_version=versions[0])
        assert refused.value.reason == "GATE_FAILED" and target in refused.value.message
        with pytest.raises(NotFound):
            a.get_deployment(dep)
        a.update_version(model_id, versions[0], labels={"ok": "yes"})
        assert a.evaluate_gate(model_id, versions[0], target).passed
        rid = str(uuid.uuid4())
        made = a.create_deployment(
            dep, model=model_id, champion_version=versions[0], request_id=rid
        )
        assert made.champion_version == versions[0]
        # A replay answers with what the request made, whatever the gate says now.
        a.update_version(model_id, versions[0], labels={"ok": "no"})
        again = a.create_deployment(
            dep, model=model_id, champion_version=versions[0], request_id=rid
        )
        assert again.etag == made.etag


def test_promote_needs_the_gate_to_pass_still(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client("alice") as a, controlplane_any.client("bob") as b:
        model_id, versions = register_versions(a, tmp_path, 2)
        dep = unique("d")
        target = f"deployments/{dep}"
        a.create_deployment(dep, model=model_id, champion_version=versions[0])
        a.create_policy(unique("p"), target=target, rules=[APPROVED])
        b.approve(model_id, versions[1], target)
        assert a.evaluate_gate(model_id, versions[1], target).passed
        a.start_rollout(dep, versions[1], strategy="ab", split=50)
        b.approve(model_id, versions[1], target, decision="reject", comment="found a problem")
        with pytest.raises(FailedPrecondition) as refused:
            a.promote_rollout(dep)
        assert refused.value.reason == "GATE_FAILED" and target in refused.value.message
        held = a.get_deployment(dep)
        assert held.champion_version == versions[0]
        assert state_of(held) == "ROLLOUT_STATE_RUNNING"
        # A failing gate decision on the new evidence refuses it too.
        assert not a.evaluate_gate(model_id, versions[1], target).passed
        with pytest.raises(FailedPrecondition):
            a.promote_rollout(dep)
        b.approve(model_id, versions[1], target, comment="fixed")
        assert a.evaluate_gate(model_id, versions[1], target).passed
        promoted = a.promote_rollout(dep)
    assert promoted.champion_version == versions[1]
    assert state_of(promoted) == "ROLLOUT_STATE_PROMOTED"


def test_automatic_promotion_pauses_once_when_the_gate_no_longer_passes(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client("alice") as a:
        model_id, versions = register_versions(a, tmp_path, 2)
        dep = unique("d")
        target = f"deployments/{dep}"
        a.create_deployment(dep, model=model_id, champion_version=versions[0])
        policy = unique("p")
        a.create_policy(policy, target=target, rules=['labels.ok == "yes"'])
        a.update_version(model_id, versions[1], labels={"ok": "yes"})
        assert a.evaluate_gate(model_id, versions[1], target).passed
        a.start_rollout(dep, versions[1], strategy="canary", steps=[50, 100], **FAST)
        # The policy tightens while the candidate is out.
        a.update_policy(policy, rules=['labels.ok == "yes"', 'labels.reviewed == "yes"'])
        side = Sidecar(a, dep)
        ended = (pb.ROLLOUT_STATE_PAUSED, pb.ROLLOUT_STATE_PROMOTED)
        paused = drive(side, lambda d: d.rollout.state in ended, candidate=30)
        assert state_of(paused) == "ROLLOUT_STATE_PAUSED"
        assert paused.champion_version == versions[0] and paused.rollout.step == 1
        assert paused.rollout.candidate_percent == 100
        event = next(iter(a.list_rollout_events(dep)))
        assert event.action == "paused" and event.actor == "modelplane"
        assert "promotion held" in event.reason and f"policies/{policy}" in event.reason
        # It stays paused, with one event, however many windows come in.
        for _ in range(6):
            side.report(champion=100, candidate=30)
            time.sleep(0.1)
        still = a.get_deployment(dep)
        assert state_of(still) == "ROLLOUT_STATE_PAUSED"
        assert still.champion_version == versions[0]
        actions = [e.action for e in a.list_rollout_events(dep)]
        assert actions.count("paused") == 1 and "promoted" not in actions
        # Once the gate passes again, resuming lets the last step promote.
        a.update_version(model_id, versions[1], labels={"ok": "yes", "reviewed": "yes"})
        assert a.evaluate_gate(model_id, versions[1], target).passed
        a.resume_rollout(dep)
        done = drive(side, lambda d: d.rollout.state in ended, candidate=30)
    assert state_of(done) == "ROLLOUT_STATE_PROMOTED"
    assert done.champion_version == versions[1]
