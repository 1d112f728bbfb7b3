"""A canary whose only step is 100% on a deployment with no champion history has no champion to
compare with, so the default guards (both relative to the champion) can never be evaluated;
through a real control plane (gRPC on loopback, SQLite) fed synthetic window reports, the
candidate's error rate is then bounded at 1%: a failing candidate is rolled back, and a healthy
one is promoted on that bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.rollouts.guards import DEFAULT_TRAFFIC_GUARDS, NO_CHAMPION_GUARD
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until
from tests.rollouts.test_step_verdict import ENDED

pytestmark = pytest.mark.timeout(120)


def test_a_single_full_step_without_a_champion_bounds_the_candidates_error_rate(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.3, min_requests=50)
    side = Sidecar(c, dep)
    # No champion request ever: nothing to compare with.
    d = report_until(
        side, lambda x: x.rollout.state in ENDED, candidate=200, candidate_errors=200, seconds=20
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed: {NO_CHAMPION_GUARD}"), d.rollout.reason
    assert "no champion to compare with" in d.rollout.reason
    assert d.champion_version == versions[0]


def test_a_healthy_single_full_step_without_a_champion_is_promoted(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.3, min_requests=50)
    side = Sidecar(c, dep)
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=30, seconds=20)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert "no champion to compare with" in d.rollout.reason
    guards = {g.expression: g for g in d.rollout.evidence.guards}
    assert guards[NO_CHAMPION_GUARD].passed and not guards[NO_CHAMPION_GUARD].error
    for g in DEFAULT_TRAFFIC_GUARDS:
        assert guards[g].error == "skipped: no champion in this step", guards[g]


def test_a_few_champion_stragglers_are_no_comparison_in_a_full_step(
    c: Client, tmp_path: Path
) -> None:
    """Requests the champion answered before every replica switched (fewer than the guards'
    minimum) neither hold the step for ever nor stand for a champion to compare with."""
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.3, min_requests=50)
    side = Sidecar(c, dep)
    side.report(champion=3, candidate=30)
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=30, seconds=20)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert "no champion to compare with" in d.rollout.reason
    guards = {g.expression: g for g in d.rollout.evidence.guards}
    assert guards[NO_CHAMPION_GUARD].passed


def test_a_failing_candidate_with_champion_stragglers_is_rolled_back(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.3, min_requests=50)
    side = Sidecar(c, dep)
    d = report_until(
        side,
        lambda x: x.rollout.state in ENDED,
        champion=3,
        candidate=100,
        candidate_errors=50,
        seconds=20,
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed: {NO_CHAMPION_GUARD}"), d.rollout.reason
