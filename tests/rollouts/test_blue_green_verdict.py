"""A blue/green phase moves only on the guards' verdict over the whole phase, through a real
control plane (gRPC on loopback, SQLite) fed synthetic window reports: time alone never moves
the shadow phase or promotes after the watch, thin windows of a failing candidate roll it back
over the phase, and thin windows of a healthy one promote it with every guard evaluated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until, wait_for
from tests.rollouts.test_step_verdict import ENDED, _actions

pytestmark = pytest.mark.timeout(120)


def _shadow(version: int, pairs: int, errors: int = 0) -> pb.ShadowSummary:
    return pb.ShadowSummary(version=version, pairs=pairs, errors=errors)


def _to_watch(c: Client, dep: str, side: Sidecar, version: int) -> None:
    """Thin, healthy shadow windows until the shadow phase ends, then wait for the watch."""
    report_until(
        side,
        lambda x: x.rollout.phase != pb.ROLLOUT_PHASE_SHADOW,
        champion=4,
        shadow=_shadow(version, 4),
    )
    wait_for(lambda: c.get_deployment(dep).rollout.phase == pb.ROLLOUT_PHASE_WATCH, "the watch", 10)


def test_no_traffic_holds_every_phase_that_needs_evidence(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.2)
    time.sleep(1.0)  # five phase durations, four reconciler passes a second
    d = c.get_deployment(dep)
    assert d.rollout.phase == pb.ROLLOUT_PHASE_SHADOW
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING
    side = Sidecar(c, dep)
    _to_watch(c, dep, side, versions[1])
    time.sleep(1.0)  # the watch has lasted its time, with no candidate request
    side.report(champion=0)
    d = c.get_deployment(dep)
    assert d.rollout.phase == pb.ROLLOUT_PHASE_WATCH
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.champion_version == versions[0]
    assert d.rollout.evidence.guards
    for g in d.rollout.evidence.guards:
        assert not g.passed and g.error.startswith("skipped: no candidate in this phase"), g
    assert _actions(c, dep) == ["started", "advanced", "advanced"]


def test_candidate_failing_every_request_at_low_traffic_is_rolled_back_in_the_watch(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.3)
    side = Sidecar(c, dep)
    _to_watch(c, dep, side, versions[1])
    # Every window has 4 candidate requests, all failed: too few for a guard on any window.
    d = report_until(
        side, lambda x: x.rollout.state in ENDED, champion=0, candidate=4, candidate_errors=4
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(
        "guard failed over the phase: candidate.error_rate <= champion.error_rate + 0.01"
    )
    assert d.champion_version == versions[0]
    ev = d.rollout.evidence
    assert ev.candidate.requests >= 20 and ev.candidate.errors == ev.candidate.requests
    assert _actions(c, dep) == ["started", "advanced", "advanced", "rolled_back"]


def test_shadow_failing_every_request_at_low_traffic_is_rolled_back_in_the_shadow_phase(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.3)
    side = Sidecar(c, dep)
    # The candidate fails every copy: no pair is ever compared, only failures counted.
    d = report_until(
        side,
        lambda x: x.rollout.state in ENDED or x.rollout.phase != pb.ROLLOUT_PHASE_SHADOW,
        champion=4,
        shadow=_shadow(versions[1], 0, errors=4),
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(
        "guard failed over the phase: shadow.error_rate <= champion.error_rate + 0.01"
    )
    assert d.champion_version == versions[0]
    assert d.rollout.evidence.shadow.errors >= 20
    assert _actions(c, dep) == ["started", "rolled_back"]


def test_healthy_candidate_at_low_traffic_is_promoted_with_every_guard_evaluated(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.3)
    side = Sidecar(c, dep)
    _to_watch(c, dep, side, versions[1])
    d = report_until(side, lambda x: x.rollout.state in ENDED, champion=0, candidate=4)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert d.champion_version == versions[1]
    assert "every guard passed over the phase" in d.rollout.reason
    assert _actions(c, dep) == ["started", "advanced", "advanced", "promoted"]
    events = {e.action + str(e.phase): e for e in c.list_rollout_events(dep)}
    shadow_end = events[f"advanced{pb.ROLLOUT_PHASE_SWITCH}"].evidence
    assert [(g.passed, g.error) for g in shadow_end.guards] == [(True, "")] * 2
    assert shadow_end.shadow.pairs >= 20
    promoted = events[f"promoted{pb.ROLLOUT_PHASE_WATCH}"].evidence
    assert [(g.passed, g.error) for g in promoted.guards] == [(True, "")] * 2
    assert promoted.candidate.requests >= 20
