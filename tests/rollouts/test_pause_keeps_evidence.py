"""A pause holds a rollout where it is, its evidence with it: through a real control plane
(gRPC on loopback, SQLite and PostgreSQL) fed synthetic window reports too thin for a guard on
any window, an A/B or shadow phase paused part-way is judged over every report since it began,
those of sidecars still at the generation before the pause included, so a failing candidate is
still rolled back; a paused canary step keeps its sum and its request count; resuming restarts
the step or phase, its evidence with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.rollouts import step_sum
from controlplane.store import Store
from controlplane.store.deployment_repos import Deployments
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.test_deployments_api import (
    Sidecar,
    arm,
    deployed,
    drive,
    register_versions,
)
from tests.rollouts.harness import Plane, client_and_store, start_held_canary
from tests.rollouts.test_step_verdict import _actions

pytestmark = pytest.mark.timeout(120)

MIN_REQUESTS = 50
#: Requests of each arm in one window: below the 20 a guard needs there.
THIN = 10


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on each backend, and a store on its database."""
    with client_and_store(tmp_path, db_url) as both:
        yield both


def _failing(side: Sidecar, strategy: str, generation: int = 0) -> None:
    """Report one thin window of a version under test failing every request; with
    ``generation``, as a sidecar still at that generation."""
    d = side.c.get_deployment(side.dep)
    shadow = None
    counts: dict[str, Any] = {"champion": THIN}
    if strategy == "shadow":
        shadow = pb.ShadowSummary(version=d.rollout.candidate_version, pairs=0, errors=THIN)
    else:
        counts.update(candidate=THIN, candidate_errors=THIN)
    if generation:
        _report_at(side, generation, shadow=shadow, **counts)
    else:
        side.report(shadow=shadow, **counts)


def _report_at(
    side: Sidecar,
    generation: int,
    champion: int,
    candidate: int = 0,
    candidate_errors: int = 0,
    shadow: pb.ShadowSummary | None = None,
) -> None:
    """Report one window as ``side`` would before it applied the deployment's latest
    generation (a pause changes no traffic, so nothing tells it to hurry)."""
    d = side.c.get_deployment(side.dep)
    side.sequence += 1
    arms = [arm("champion", d.champion_version, champion)]
    if candidate:
        arms.append(arm("candidate", d.rollout.candidate_version, candidate, candidate_errors))
    request = pb.ReportWindowRequest(
        name=f"deployments/{side.dep}",
        replica=side.replica,
        sequence=side.sequence,
        generation=generation,
        rollout_id=d.rollout.id,
        arms=arms,
    )
    if shadow is not None:
        request.shadow.CopyFrom(shadow)
    side.c._call(side.c.deployments.ReportWindow, request)


def _state(c: Client, dep: str) -> int:
    return c.get_deployment(dep).rollout.state


def _rolled_back_over_the_phase(c: Client, dep: str, tested: int) -> None:
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith("guard failed over the phase: "), d.rollout.reason
    ev = d.rollout.evidence
    if d.rollout.strategy == pb.ROLLOUT_STRATEGY_SHADOW:
        assert ev.shadow.errors == tested
    else:
        assert ev.candidate.requests == ev.candidate.errors == tested


def _failing_for_a_while(c: Client, tmp_path: Path, strategy: str) -> tuple[str, Sidecar]:
    """A new deployment's open-ended rollout of ``strategy`` with 30 failing requests of the
    version under test (three thin windows), and its sidecar."""
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy=strategy, min_requests=MIN_REQUESTS)
    side = Sidecar(c, dep)
    for _ in range(3):
        _failing(side, strategy)
    return dep, side


@pytest.mark.parametrize("strategy", ["ab", "shadow"])
def test_a_failing_candidate_paused_part_way_is_rolled_back_over_the_whole_phase(
    plane: Plane, tmp_path: Path, strategy: str
) -> None:
    c, _ = plane
    dep, side = _failing_for_a_while(c, tmp_path, strategy)
    c.pause_rollout(dep, reason="look")
    _failing(side, strategy)
    # 40 requests in the phase: not judged yet, and the pause holds.
    assert _state(c, dep) == pb.ROLLOUT_STATE_PAUSED
    _failing(side, strategy)
    _rolled_back_over_the_phase(c, dep, MIN_REQUESTS)
    assert _actions(c, dep) == ["started", "paused", "rolled_back"]


@pytest.mark.parametrize("strategy", ["ab", "shadow"])
def test_reports_of_sidecars_still_at_the_generation_before_a_pause_count(
    plane: Plane, tmp_path: Path, strategy: str
) -> None:
    c, _ = plane
    dep, side = _failing_for_a_while(c, tmp_path, strategy)
    before = c.get_deployment(dep).generation
    assert c.pause_rollout(dep).generation > before
    _failing(side, strategy, generation=before)
    assert _state(c, dep) == pb.ROLLOUT_STATE_PAUSED
    _failing(side, strategy, generation=before)
    _rolled_back_over_the_phase(c, dep, MIN_REQUESTS)


def test_resuming_restarts_the_phase_and_its_evidence(plane: Plane, tmp_path: Path) -> None:
    c, _ = plane
    dep, side = _failing_for_a_while(c, tmp_path, "ab")
    c.pause_rollout(dep)
    _failing(side, "ab")
    c.resume_rollout(dep)
    for _ in range(4):
        _failing(side, "ab")
        # 40 requests since the resume (80 since the rollout began): not judged yet.
        assert _state(c, dep) == pb.ROLLOUT_STATE_RUNNING
    _failing(side, "ab")
    _rolled_back_over_the_phase(c, dep, MIN_REQUESTS)
    assert _actions(c, dep) == ["started", "paused", "resumed", "rolled_back"]


def _kept_candidate_requests(store: Store, dep: str) -> int:
    with store.read() as tx:
        d = Deployments(tx.session).get(dep)
        assert d is not None and d.active_rollout is not None
        kept = step_sum.kept(tx, d, d.active_rollout)
        assert kept is not None and kept.candidate is not None, "no sum kept for the step"
        return kept.candidate.requests


def test_a_paused_canary_step_keeps_its_sum_and_request_count_until_resumed(
    plane: Plane, tmp_path: Path
) -> None:
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    start_held_canary(c, dep, versions[1])
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(champion=100, candidate=100)
    running = c.get_deployment(dep)
    before = running.generation
    paused = c.pause_rollout(dep)
    assert paused.rollout.phase_start_time == running.rollout.phase_start_time
    _report_at(side, before, champion=100, candidate=100)
    side.report(champion=100, candidate=100)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_PAUSED
    assert d.rollout.evidence.step_candidate_requests == 500
    assert _kept_candidate_requests(store, dep) == 500
    c.resume_rollout(dep)
    side.report(champion=100, candidate=100)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING
    assert d.rollout.evidence.step_candidate_requests == 100
    assert _kept_candidate_requests(store, dep) == 100


@pytest.mark.parametrize(
    ("strategy", "reported", "scope"),
    [("canary", "ab", "step"), ("blue_green", "shadow", "phase")],
)
def test_a_failing_candidate_in_a_paused_step_is_rolled_back_over_the_step(
    plane: Plane, tmp_path: Path, strategy: str, reported: str, scope: str
) -> None:
    """A paused canary step or blue/green phase never completes, so it is judged as an A/B
    phase is: once the version under test has min_requests there, a guard failing over the
    step so far rolls it back."""
    c, _ = plane
    dep, versions = deployed(c, tmp_path)
    kw: dict[str, Any] = {"steps": [50, 100]} if strategy == "canary" else {}
    c.start_rollout(
        dep,
        versions[1],
        strategy=strategy,
        step_duration=3600,
        min_requests=MIN_REQUESTS,
        **kw,
    )
    side = Sidecar(c, dep)
    for _ in range(3):
        _failing(side, reported)
    c.pause_rollout(dep, reason="look")
    _failing(side, reported)
    assert _state(c, dep) == pb.ROLLOUT_STATE_PAUSED
    _failing(side, reported)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the {scope}: "), d.rollout.reason
    ev = d.rollout.evidence
    tested = ev.shadow.errors if reported == "shadow" else ev.candidate.errors
    assert tested == MIN_REQUESTS
    assert _actions(c, dep) == ["started", "paused", "rolled_back"]


def test_a_gate_hold_keeps_every_request_of_the_step_counted(plane: Plane, tmp_path: Path) -> None:
    """The automatic pause when the gate refuses the last step's promotion comes on a report
    that has just counted its candidate requests: the held step's count keeps them, and stays
    the kept sum's."""
    c, store = plane
    model_id, versions = register_versions(c, tmp_path, 2)
    dep = unique("d")
    target = f"deployments/{dep}"
    c.create_deployment(dep, model=model_id, champion_version=versions[0])
    policy = unique("p")
    c.create_policy(policy, target=target, rules=['labels.ok == "yes"'])
    c.update_version(model_id, versions[1], labels={"ok": "yes"})
    assert c.evaluate_gate(model_id, versions[1], target).passed
    c.start_rollout(
        dep, versions[1], strategy="canary", steps=[50, 100], step_duration=0.3, min_requests=50
    )
    c.update_policy(policy, rules=['labels.ok == "yes"', 'labels.reviewed == "yes"'])
    side = Sidecar(c, dep)
    ended = (pb.ROLLOUT_STATE_PAUSED, pb.ROLLOUT_STATE_PROMOTED)
    held = drive(side, lambda d: d.rollout.state in ended, candidate=30)
    assert held.rollout.state == pb.ROLLOUT_STATE_PAUSED, held.rollout.reason
    assert _kept_candidate_requests(store, dep) == held.rollout.evidence.step_candidate_requests
    side.report(champion=0, candidate=30)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_PAUSED
    assert _kept_candidate_requests(store, dep) == d.rollout.evidence.step_candidate_requests
