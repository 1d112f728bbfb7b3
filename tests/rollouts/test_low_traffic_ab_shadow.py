"""A/B and shadow rollouts at low traffic, through a real control plane (gRPC on loopback,
SQLite and PostgreSQL) fed synthetic window reports of 10 requests an arm, too few for a guard
on any window: once the version under test has answered the rollout's ``min_requests``
requests, the guards are evaluated over the whole phase, and one that fails rolls it back; a
healthy one is never moved on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.rollouts.guards import DEFAULT_SHADOW_GUARDS, DEFAULT_TRAFFIC_GUARDS
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed
from tests.rollouts.inprocess import client  # noqa: F401
from tests.rollouts.test_step_verdict import _actions

pytestmark = pytest.mark.timeout(120)

MIN_REQUESTS = 50
#: Requests of each arm in one window: below the 20 a guard needs there.
THIN = 10


def _failed_copies(version: int) -> pb.ShadowSummary:
    return pb.ShadowSummary(version=version, pairs=0, errors=THIN)


def test_ab_candidate_failing_every_request_is_rolled_back_over_the_phase(
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    dep, versions = deployed(client, tmp_path)
    client.start_rollout(dep, versions[1], strategy="ab", min_requests=MIN_REQUESTS)
    side = Sidecar(client, dep)
    for _ in range(MIN_REQUESTS // THIN - 1):
        side.report(champion=THIN, candidate=THIN, candidate_errors=THIN)
        # Fewer than min_requests candidate requests in the phase: not judged yet.
        assert client.get_deployment(dep).rollout.state == pb.ROLLOUT_STATE_RUNNING
    side.report(champion=THIN, candidate=THIN, candidate_errors=THIN)
    d = client.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the phase: {DEFAULT_TRAFFIC_GUARDS[0]}")
    assert d.champion_version == versions[0]
    ev = d.rollout.evidence
    assert ev.candidate.requests == ev.candidate.errors == MIN_REQUESTS
    assert ev.champion.requests == MIN_REQUESTS
    assert _actions(client, dep) == ["started", "rolled_back"]


def test_shadow_failing_every_copy_is_rolled_back_over_the_phase(
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    dep, versions = deployed(client, tmp_path)
    client.start_rollout(dep, versions[1], strategy="shadow", min_requests=MIN_REQUESTS)
    side = Sidecar(client, dep)
    for _ in range(MIN_REQUESTS // THIN - 1):
        side.report(champion=THIN, shadow=_failed_copies(versions[1]))
        assert client.get_deployment(dep).rollout.state == pb.ROLLOUT_STATE_RUNNING
    side.report(champion=THIN, shadow=_failed_copies(versions[1]))
    d = client.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the phase: {DEFAULT_SHADOW_GUARDS[0]}")
    assert d.rollout.evidence.shadow.errors == MIN_REQUESTS
    assert _actions(client, dep) == ["started", "rolled_back"]


@pytest.mark.parametrize("strategy", ["ab", "shadow"])
def test_healthy_candidate_at_low_traffic_is_neither_rolled_back_nor_promoted(
    client: Client,  # noqa: F811
    tmp_path: Path,
    strategy: str,
) -> None:
    dep, versions = deployed(client, tmp_path)
    client.start_rollout(dep, versions[1], strategy=strategy, min_requests=MIN_REQUESTS)
    side = Sidecar(client, dep)
    agreeing = pb.ShadowSummary(version=versions[1], pairs=THIN)
    for _ in range(3 * MIN_REQUESTS // THIN):
        if strategy == "ab":
            side.report(champion=THIN, candidate=THIN)
        else:
            side.report(champion=THIN, shadow=agreeing)
    d = client.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert d.champion_version == versions[0]
    assert _actions(client, dep) == ["started"]
