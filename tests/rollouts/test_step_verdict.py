"""A canary step moves only on the guards' verdict over the whole step, through a real control
plane (gRPC on loopback, SQLite) fed synthetic window reports: thin windows, each below
``guard_min_requests``, must neither let a failing candidate through nor hold a healthy one
forever; shares that route nothing are refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from controlplane.rollouts.service import SYSTEM
from controlplane.store import Store
from controlplane.store.deployment_tables import RolloutRow
from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until

pytestmark = pytest.mark.timeout(120)

ERRORS = "candidate.error_rate <= champion.error_rate + 0.01"
ENDED = (pb.ROLLOUT_STATE_PROMOTED, pb.ROLLOUT_STATE_ROLLED_BACK, pb.ROLLOUT_STATE_ABORTED)


def _actions(c: Client, dep: str) -> list[str]:
    return [e.action for e in reversed(list(c.list_rollout_events(dep)))]


def test_thin_windows_of_a_failing_candidate_roll_it_back_over_the_step(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.3, min_requests=10, guards=[ERRORS]
    )
    side = Sidecar(c, dep)
    # Every window has 4 candidate requests, all failed: too few for a guard on any window.
    d = report_until(
        side, lambda x: x.rollout.state in ENDED, champion=4, candidate=4, candidate_errors=4
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the step: {ERRORS}")
    assert d.champion_version == versions[0]
    ev = d.rollout.evidence
    assert ev.candidate.requests >= 20 and ev.candidate.errors == ev.candidate.requests
    assert _actions(c, dep) == ["started", "rolled_back"]


def test_thin_windows_of_a_healthy_candidate_promote_it_with_every_guard_evaluated(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.3, min_requests=10, guards=[ERRORS]
    )
    side = Sidecar(c, dep)
    report_until(side, lambda x: x.rollout.step == 1, champion=4, candidate=4)
    # At 100% the champion answers nothing: the previous step's champion is the comparison.
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=4)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert d.champion_version == versions[1]
    assert "every guard passed over the step" in d.rollout.reason
    assert _actions(c, dep) == ["started", "advanced", "promoted"]
    for event in c.list_rollout_events(dep):
        if event.action in ("advanced", "promoted"):
            assert [(g.expression, g.passed, g.error) for g in event.evidence.guards] == [
                (ERRORS, True, "")
            ]
            assert event.evidence.candidate.requests >= 20


def test_a_guard_without_values_holds_a_complete_step_and_a_shadow_guard_does_not(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path, guards=["shadow.disagreement_rate <= 0.1"])
    c.start_rollout(
        dep,
        versions[1],
        steps=[50, 100],
        step_duration=0.2,
        min_requests=10,
        guards=["candidate.accuracy >= 0.5"],
    )
    side = Sidecar(c, dep)
    for _ in range(15):  # 150 candidate requests: the step's requests are long complete
        side.report(champion=10, candidate=10)
    time.sleep(0.3)  # and so is its time
    side.report(champion=10, candidate=10)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 0
    shadow, accuracy = d.rollout.evidence.guards
    assert accuracy.error == "skipped: no value for candidate.accuracy in this step"
    assert shadow.error == "skipped: no shadow in this step"
    assert _actions(c, dep) == ["started"]


def test_a_single_full_step_compares_with_the_champion_before_the_rollout(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(champion=10)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.2, min_requests=10)
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=5)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert all(g.passed and not g.error for g in d.rollout.evidence.guards)
    # The champion row is the step's own (none); each guard reading it says what it read.
    assert d.rollout.evidence.champion.requests == 0
    for g in d.rollout.evidence.guards:
        assert "judged against the windows before the rollout's champion (30 requests): " in (
            g.detail
        ), g
        assert "this step's champion answered 0, fewer than the" in g.detail


def test_a_last_step_of_all_traffic_compares_with_an_earlier_steps_champion(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    side = Sidecar(c, dep)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10)
    report_until(side, lambda x: x.rollout.step == 1, champion=30, candidate=30)
    d = report_until(side, lambda x: x.rollout.state in ENDED, champion=1, candidate=30)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    evidence = d.rollout.evidence
    assert evidence.scope == pb.EVIDENCE_SCOPE_STEP and 0 < evidence.champion.requests < 10
    notes = [g.detail for g in evidence.guards]
    assert notes and all("judged against an earlier step's champion (" in n for n in notes)


@pytest.mark.parametrize(
    ("rollout", "field"),
    [
        ({"strategy": "canary", "steps": [0.005, 100]}, "rollout.steps"),
        ({"strategy": "canary", "steps": [10, 10.004, 100]}, "rollout.steps"),
        ({"strategy": "ab", "split": 0.004}, "rollout.split"),
        ({"strategy": "ab", "split": 99.996}, "rollout.split"),
        ({"strategy": "shadow", "shadow_fraction": 0.00004}, "rollout.shadow_fraction"),
        ({"strategy": "blue_green", "shadow_fraction": 0.00001}, "rollout.shadow_fraction"),
    ],
)
def test_shares_that_route_nothing_are_refused(
    c: Client, tmp_path: Path, rollout: dict[str, Any], field: str
) -> None:
    dep, versions = deployed(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        c.start_rollout(dep, versions[1], **rollout)
    assert err.value.metadata["field"] == field
    assert "0.01%" in err.value.message
    assert not c.get_deployment(dep).rollout.id
    # The smallest share that routes anything is accepted.
    smallest_by_field: dict[str, dict[str, Any]] = {
        "rollout.steps": {"strategy": "canary", "steps": [0.01, 0.02, 100]},
        "rollout.split": {"strategy": "ab", "split": 0.01},
        "rollout.shadow_fraction": {"strategy": "shadow", "shadow_fraction": 0.0001},
    }
    smallest = smallest_by_field[field]
    assert c.start_rollout(dep, versions[1], **smallest).rollout.state == pb.ROLLOUT_STATE_RUNNING


def test_a_stored_guard_this_server_no_longer_accepts_holds_the_rollout(tmp_path: Path) -> None:
    """A guard stored before a rule limit it now breaks: reports are still taken, and the
    rollout is held with the reason, instead of every report being refused."""
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    plane = start_controlplane(tmp_path, url)
    store = Store.open(url)
    try:
        with plane.client() as c:
            dep, versions = deployed(c, tmp_path)
            c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.1, guards=[ERRORS])
            deep = "[1, 2].all(a, [3, 4].all(b, [5, 6].all(x, a < b + x)))"
            with store.write(SYSTEM, "test") as tx:
                tx.session.exec(  # type: ignore[call-overload]
                    update(RolloutRow)
                    .where(col(RolloutRow.deployment_id) == dep)
                    .values(guards=[deep])
                )
            side = Sidecar(c, dep)
            time.sleep(0.2)
            for _ in range(3):
                assert side.report(champion=30, candidate=30).accepted
            d = c.get_deployment(dep)
            assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 0
            (guard,) = d.rollout.evidence.guards
            assert guard.expression == deep and not guard.passed
            assert "no longer accepts the guards" in guard.error
    finally:
        plane.handle.stop(0)
        store.close()
