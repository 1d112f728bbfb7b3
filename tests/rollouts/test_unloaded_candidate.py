"""A replica that reports the candidate unloaded (``unloaded_versions``) holds the rollout, is
visible in its events and held evidence, and stops holding it once it loads the candidate:
through a real control plane (gRPC on loopback, SQLite) fed synthetic window reports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelplane import Client
from modelplane.cli.rollout import status
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until, wait_for
from tests.rollouts.test_step_verdict import ENDED, ERRORS, _actions

pytestmark = pytest.mark.timeout(120)

WHY = "artifact digest mismatch: expected sha256:ab12, got sha256:cd34"


def _both(bad: Sidecar, ok: Sidecar, version: int, rounds: int, **counts: Any) -> None:
    """``rounds`` windows from each replica: ``bad`` cannot load ``version`` and serves the
    champion alone, ``ok`` reports ``counts``."""
    for _ in range(rounds):
        bad.report(champion=4, unloaded={version: WHY})
        ok.report(**counts)


def test_an_unloaded_candidate_holds_a_complete_canary_step_until_it_loads(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    candidate = versions[1]
    c.start_rollout(dep, candidate, steps=[50, 100], step_duration=0.2, min_requests=10)
    bad, ok = Sidecar(c, dep, "pod-bad"), Sidecar(c, dep, "pod-ok")
    _both(bad, ok, candidate, 10, champion=10, candidate=10)
    time.sleep(0.3)
    _both(bad, ok, candidate, 1, champion=10, candidate=10)
    # The step has lasted its time with 110 candidate requests, every guard passing on them.
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 0
    held = f"held: candidate version {candidate} is not loaded on replica pod-bad ({WHY})"
    assert [(g.passed, g.error) for g in d.rollout.evidence.guards] == [(False, held)] * 2
    assert d.rollout.evidence.candidate.requests >= 100
    cli = status(d)["evidence"]["guards"]
    assert {g["error"] for g in cli} == {held}
    events = list(c.list_rollout_events(dep))
    unloaded = [e for e in events if e.action == "candidate_unloaded"]
    assert len(unloaded) == 1, "one event per replica, not one per report"
    assert "pod-bad" in unloaded[0].reason and WHY in unloaded[0].reason
    assert f"candidate version {candidate}" in unloaded[0].reason
    audit = [e.action for e in c.audit_events(resource=f"deployments/{dep}")]
    assert "CandidateUnloaded" in audit

    # Once it loads the candidate, the step moves on the next report.
    bad.report(champion=4, candidate=4)
    d = report_until(ok, lambda x: x.rollout.step == 1, champion=10, candidate=10)
    assert "every guard passed over the step" in d.rollout.reason
    assert _actions(c, dep) == ["started", "candidate_unloaded", "candidate_loaded", "advanced"]
    loaded = next(e for e in c.list_rollout_events(dep) if e.action == "candidate_loaded")
    assert "pod-bad" in loaded.reason


def test_an_unloaded_candidate_holds_the_blue_green_shadow_phase(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    candidate = versions[1]
    c.start_rollout(dep, candidate, strategy="blue_green", step_duration=0.2)
    bad, ok = Sidecar(c, dep, "pod-bad"), Sidecar(c, dep, "pod-ok")
    calm = pb.ShadowSummary(version=candidate, pairs=10)
    _both(bad, ok, candidate, 5, champion=10, shadow=calm)
    time.sleep(0.3)
    _both(bad, ok, candidate, 1, champion=10, shadow=calm)
    d = c.get_deployment(dep)
    assert d.rollout.phase == pb.ROLLOUT_PHASE_SHADOW, d.rollout.reason
    assert all(g.error.startswith("held: candidate version") for g in d.rollout.evidence.guards)
    # Loaded everywhere: the phase moves, the switch follows, and the watch promotes.
    bad.report(champion=10, shadow=calm)
    d = report_until(
        ok, lambda x: x.rollout.phase != pb.ROLLOUT_PHASE_SHADOW, champion=10, shadow=calm
    )
    wait_for(lambda: c.get_deployment(dep).rollout.phase == pb.ROLLOUT_PHASE_WATCH, "watch", 10)
    d = report_until(ok, lambda x: x.rollout.state in ENDED, candidate=10)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert _actions(c, dep) == [
        "started",
        "candidate_unloaded",
        "candidate_loaded",
        "advanced",
        "advanced",
        "promoted",
    ]


def test_a_failing_candidate_is_still_rolled_back_while_a_replica_cannot_load_it(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    candidate = versions[1]
    c.start_rollout(
        dep, candidate, steps=[50, 100], step_duration=0.2, min_requests=10, guards=[ERRORS]
    )
    bad, ok = Sidecar(c, dep, "pod-bad"), Sidecar(c, dep, "pod-ok")
    bad.report(champion=4, unloaded={candidate: WHY})
    d = report_until(
        ok, lambda x: x.rollout.state in ENDED, champion=4, candidate=4, candidate_errors=4
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the step: {ERRORS}")


def test_unloaded_versions_must_be_versions(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100])
    with pytest.raises(InvalidArgument) as err:
        Sidecar(c, dep).report(champion=4, unloaded={0: "?"})
    assert err.value.metadata["field"] == "unloaded_versions"
    # A version that is not the candidate holds nothing and records nothing.
    Sidecar(c, dep).report(champion=4, unloaded={versions[2]: WHY})
    assert _actions(c, dep) == ["started"]
