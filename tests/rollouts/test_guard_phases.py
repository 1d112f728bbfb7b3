"""A guard reading an arm the phase never has is skipped on every window, as it is over the
whole step or phase, through a real control plane (gRPC on loopback, SQLite and PostgreSQL)
fed synthetic window reports: the shadow copies of a replica that has not yet applied the
blue/green switch, and requests that pinned the candidate during a shadow rollout, roll
nothing back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.rollouts.guards import DEFAULT_SHADOW_GUARDS, DEFAULT_TRAFFIC_GUARDS
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until
from tests.rollouts.test_step_verdict import _actions

pytestmark = pytest.mark.timeout(120)

SHADOW_GUARD = "shadow.disagreement_rate <= 0.05"
CANDIDATE_GUARD = "candidate.error_rate <= champion.error_rate + 0.01"


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[Client]:
    """A client of a control plane of its own on each backend, whose blue/green switch lasts
    a minute (the tests report in the switch phase)."""
    cp = start_controlplane(tmp_path, db_url, blue_green_switch_seconds=60)
    with cp.client() as c:
        yield c
    cp.handle.stop(0)


def _guards(d: pb.Deployment) -> dict[str, tuple[bool, str]]:
    return {g.expression: (g.passed, g.error) for g in d.rollout.evidence.guards}


def test_stale_shadow_copies_in_the_switch_phase_roll_nothing_back(
    client: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(client, tmp_path, guards=[SHADOW_GUARD])
    client.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.3)
    a, b = Sidecar(client, dep, "replica-a"), Sidecar(client, dep, "replica-b")

    def compared(pairs: int, disagreements: int) -> pb.ShadowSummary:
        return pb.ShadowSummary(version=versions[1], pairs=pairs, disagreements=disagreements)

    report_until(
        b,
        lambda x: x.rollout.phase != pb.ROLLOUT_PHASE_SHADOW,
        champion=300,
        shadow=compared(300, 0),
    )
    # B applied the switch; A has not yet: it still copies requests to the shadow, and 10% of
    # its 30 copies disagree. Shadow guards do not apply while the candidate serves traffic.
    b.report(candidate=300)
    a.report(champion=30, shadow=compared(30, 3))
    d = client.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert d.rollout.phase == pb.ROLLOUT_PHASE_SWITCH
    assert not d.rollout.evidence.HasField("shadow")
    guards = _guards(d)
    assert guards[SHADOW_GUARD] == (False, "skipped: no shadow in this window")
    error_guard, latency_guard = DEFAULT_TRAFFIC_GUARDS
    assert guards[error_guard] == (True, ""), guards
    # A window's p99 over A's 30 champion requests is not judged (100 needed).
    assert guards[latency_guard] == (
        False,
        "skipped: champion has fewer than 100 requests in this window",
    ), guards
    assert _actions(client, dep) == ["started", "advanced"]


def test_pinned_candidate_requests_in_a_shadow_rollout_roll_nothing_back(
    client: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(client, tmp_path, guards=[CANDIDATE_GUARD])
    client.start_rollout(dep, versions[1], strategy="shadow")
    side = Sidecar(client, dep)
    agreeing = pb.ShadowSummary(version=versions[1], pairs=100, disagreements=0)
    # 25 requests pinned the candidate's version (model_version), 5 of them failed: the
    # candidate answers no routed traffic in a shadow phase, so no guard judges it there.
    side.report(champion=100, candidate=25, candidate_errors=5, shadow=agreeing)
    d = client.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert not d.rollout.evidence.HasField("candidate")
    guards = _guards(d)
    assert guards[CANDIDATE_GUARD] == (False, "skipped: no candidate in this window")
    for guard in DEFAULT_SHADOW_GUARDS:
        assert guards[guard] == (True, ""), guards
    assert _actions(client, dep) == ["started"]
