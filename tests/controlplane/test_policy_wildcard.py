"""A policy bound to ``deployments/*`` governs every deployment that has no policy bound to its
own ``deployments/{id}``: creating one with a champion, and starting a rollout, need a passed
gate decision for that deployment, evaluated with the wildcard's rules. Decisions and
approvals keep the deployment's own name, and a deployment with a policy of its own is gated by
that one alone. Each test runs a control plane on a database of its own (SQLite, and
PostgreSQL when reachable), since such a policy governs every deployment there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.conftest import private_database, unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_deployments_api import register_versions

APPROVED = 'approvals.exists(a, a.decision == "approve")'


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningControlPlane]:
    """A control plane on a database no other test uses."""
    if request.param == "sqlite":
        cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'own.db'}")
        yield cp
        cp.handle.stop(0)
        return
    request.getfixturevalue("pg_url")  # skips without a PostgreSQL server
    with private_database(f"modelplane_test_{uuid.uuid4().hex[:12]}") as url:
        cp = start_controlplane(tmp_path, url)
        yield cp
        cp.handle.stop(0)


def test_a_new_deployment_needs_the_gate_of_the_wildcard_policy(
    own_plane: RunningControlPlane, tmp_path: Path
) -> None:
    with own_plane.client("alice") as a, own_plane.client("bob") as b:
        model_id, (v1, v2) = register_versions(a, tmp_path, 2)
        made = a.create_policy("every-deployment", target="deployments/*", rules=[APPROVED])
        assert made.target == "deployments/*"
        dep = unique("d")
        target = f"deployments/{dep}"
        with pytest.raises(FailedPrecondition) as refused:
            a.create_deployment(dep, model=model_id, champion_version=v1)
        assert refused.value.reason == "GATE_FAILED"
        assert target in refused.value.message
        assert "policies/every-deployment (bound to deployments/*)" in refused.value.message
        # Gate and approval are the deployment's own, evaluated with the wildcard's rules.
        assert not a.evaluate_gate(model_id, v1, target).passed
        approval = b.approve(model_id, v1, target)
        assert approval.target == target
        decision = a.evaluate_gate(model_id, v1, target)
        assert decision.passed and decision.target == target
        assert decision.policy == "policies/every-deployment"
        assert a.create_deployment(dep, model=model_id, champion_version=v1).champion_version == v1
        # Another deployment of the same version has its own gate: that approval is not its.
        other = unique("d")
        with pytest.raises(FailedPrecondition) as again:
            a.create_deployment(other, model=model_id, champion_version=v1)
        assert again.value.reason == "GATE_FAILED" and f"deployments/{other}" in again.value.message
        # A rollout's candidate is gated the same way.
        with pytest.raises(FailedPrecondition) as rollout:
            a.start_rollout(dep, v2, strategy="ab", split=50)
        assert rollout.value.reason == "GATE_FAILED" and target in rollout.value.message
        b.approve(model_id, v2, target)
        assert a.evaluate_gate(model_id, v2, target).passed
        started = a.start_rollout(dep, v2, strategy="ab", split=50)
        assert started.rollout.candidate_version == v2


def test_a_deployment_with_a_policy_of_its_own_is_gated_by_that_one(
    own_plane: RunningControlPlane, tmp_path: Path
) -> None:
    with own_plane.client("alice") as a:
        model_id, (v1, _) = register_versions(a, tmp_path, 2)
        a.create_policy("every-deployment", target="deployments/*", rules=[APPROVED])
        dep = unique("d")
        target = f"deployments/{dep}"
        # An exact policy may be bound beside the wildcard; a second wildcard may not.
        a.create_policy("own", target=target, rules=['labels.ok == "yes"'])
        with pytest.raises(AlreadyExists) as taken:
            a.create_policy("every-deployment-2", target="deployments/*", rules=[APPROVED])
        assert taken.value.reason == "TARGET_HAS_POLICY"
        with pytest.raises(FailedPrecondition) as refused:
            a.create_deployment(dep, model=model_id, champion_version=v1)
        assert "policies/own:" in refused.value.message
        a.update_version(model_id, v1, labels={"ok": "yes"})
        # No approval: the wildcard's rule does not apply to it.
        decision = a.evaluate_gate(model_id, v1, target)
        assert decision.passed and decision.policy == "policies/own"
        assert a.create_deployment(dep, model=model_id, champion_version=v1).champion_version == v1
        # Deleting the wildcard leaves other deployments ungoverned again.
        a.delete_policy("every-deployment")
        free = unique("d")
        assert a.create_deployment(free, model=model_id, champion_version=v1).name


def test_only_deployments_star_is_wild(own_plane: RunningControlPlane, tmp_path: Path) -> None:
    with own_plane.client("alice") as a, own_plane.client("bob") as b:
        model_id, (v1, _) = register_versions(a, tmp_path, 2)
        for target in ("*", "deployments/d*", "deployments/*/x", "models/*", "deployments/**"):
            with pytest.raises(InvalidArgument):
                a.create_policy(unique("p"), target=target, rules=[APPROVED])
        a.create_policy("every-deployment", target="deployments/*", rules=[APPROVED])
        # A gate or an approval names one deployment, never the wildcard.
        for call in (
            lambda: a.evaluate_gate(model_id, v1, "deployments/*"),
            lambda: b.approve(model_id, v1, "deployments/*"),
        ):
            with pytest.raises(InvalidArgument) as wild:
                call()
            assert wild.value.reason == "INVALID_TARGET"
            assert "deployments/{deployment}" in wild.value.message
        # An alias is not governed by it.
        assert a.evaluate_gate(model_id, v1, "production").policy == ""
        a.set_alias(model_id, "production", v1)
