"""Every phase of a rollout is judged by a guard on the version under test, through a real
control plane (gRPC on loopback, SQLite) fed synthetic window reports: where none of the
deployment's or rollout's guards judges it (a shadow guard in a canary step or the blue/green
watch, a candidate guard in the blue/green shadow phase), the phase's defaults are in force
too, so a failing candidate is rolled back and a healthy one never waits for ever, and a step
never "passes" with no guard evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.rollouts.guards import DEFAULT_SHADOW_GUARDS, DEFAULT_TRAFFIC_GUARDS
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until
from tests.rollouts.test_blue_green_verdict import _to_watch
from tests.rollouts.test_step_verdict import ENDED, _actions

pytestmark = pytest.mark.timeout(120)

SHADOW_GUARD = "shadow.disagreement_rate <= 0.1"
ERRORS = DEFAULT_TRAFFIC_GUARDS[0]


@pytest.mark.parametrize("owner", ["rollout", "deployment"])
def test_a_shadow_guard_leaves_a_canary_guarded_by_the_defaults(
    c: Client, tmp_path: Path, owner: str
) -> None:
    on_deployment = {"guards": [SHADOW_GUARD]} if owner == "deployment" else {}
    on_rollout = {"guards": [SHADOW_GUARD]} if owner == "rollout" else {}
    dep, versions = deployed(c, tmp_path, **on_deployment)
    d = c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.3, min_requests=50, **on_rollout
    )
    assert list(d.rollout.effective_guards) == [SHADOW_GUARD, *DEFAULT_TRAFFIC_GUARDS]
    side = Sidecar(c, dep)
    # The candidate fails half its requests.
    d = report_until(
        side, lambda x: x.rollout.state in ENDED, champion=100, candidate=100, candidate_errors=50
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.champion_version == versions[0]
    assert d.rollout.reason.startswith(f"guard failed: {ERRORS}"), d.rollout.reason
    assert "a default guard of the canary phase" in d.rollout.reason
    assert _actions(c, dep) == ["started", "rolled_back"]


def test_a_healthy_canary_with_only_a_shadow_guard_promotes_on_the_defaults(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path, guards=[SHADOW_GUARD])
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.3, min_requests=50)
    side = Sidecar(c, dep)
    d = report_until(side, lambda x: x.rollout.state in ENDED, champion=100, candidate=100)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    # Not "every guard passed": the shadow guard was not evaluated; the defaults were.
    assert "every guard passed" not in d.rollout.reason
    assert "every guard that applies passed over the step (2 of 3" in d.rollout.reason
    assert "a default guard of the canary phase" in d.rollout.reason
    guards = {g.expression: g for g in d.rollout.evidence.guards}
    assert guards[SHADOW_GUARD].error == "skipped: no shadow in this step"
    assert all(guards[g].passed and not guards[g].error for g in DEFAULT_TRAFFIC_GUARDS)


def test_blue_green_with_only_a_shadow_guard_rolls_back_a_failing_candidate_in_the_watch(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], strategy="blue_green", step_duration=0.3, guards=[SHADOW_GUARD]
    )
    side = Sidecar(c, dep)
    _to_watch(c, dep, side, versions[1])
    d = c.get_deployment(dep)
    assert list(d.rollout.effective_guards) == [SHADOW_GUARD, *DEFAULT_TRAFFIC_GUARDS]
    d = report_until(
        side, lambda x: x.rollout.state in ENDED, candidate=100, candidate_errors=50, seconds=20
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed: {ERRORS}"), d.rollout.reason
    assert "a default guard of the watch phase" in d.rollout.reason
    assert d.champion_version == versions[0]
    assert _actions(c, dep) == ["started", "advanced", "advanced", "rolled_back"]


def test_blue_green_with_only_a_candidate_guard_leaves_the_shadow_phase_on_the_defaults(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    d = c.start_rollout(
        dep,
        versions[1],
        strategy="blue_green",
        step_duration=0.3,
        guards=["candidate.error_rate <= 0.01"],
    )
    assert list(d.rollout.effective_guards) == [
        "candidate.error_rate <= 0.01",
        *DEFAULT_SHADOW_GUARDS,
    ]
    side = Sidecar(c, dep)
    _to_watch(c, dep, side, versions[1])
    switched = next(e for e in c.list_rollout_events(dep) if e.phase == pb.ROLLOUT_PHASE_SWITCH)
    assert "a default guard of the shadow phase" in switched.reason
    assert [(g.passed, g.error) for g in switched.evidence.guards] == [
        (False, "skipped: no candidate in this phase"),
        (True, ""),
        (True, ""),
    ]
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=4, seconds=20)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert "every guard passed over the phase" in d.rollout.reason
