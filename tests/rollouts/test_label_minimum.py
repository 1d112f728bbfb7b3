"""A guard reading ``accuracy`` waits for ``guard_min_requests`` labeled predictions of the arm,
on a window as over a step, through a real control plane (gRPC on loopback, SQLite) fed
synthetic window reports: one wrong label among a window's requests rolls nothing back, enough
labels at a low accuracy do, and a high accuracy moves the rollout on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controlplane.rollouts import guards
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, arm, deployed, wait_for
from tests.rollouts.test_step_verdict import ENDED, _actions

pytestmark = pytest.mark.timeout(120)

ACCURACY = "candidate.accuracy >= 0.5"
GATED = "candidate.labeled >= 50 && candidate.accuracy >= 0.9"
FEW = "skipped: candidate has fewer than 20 labeled predictions in this {}"


class LabeledSidecar(Sidecar):
    """A fake sidecar replica whose candidate arm carries labels."""

    def labeled(
        self, champion: int, candidate: int, labeled: int, correct: int
    ) -> pb.ReportWindowResponse:
        """Report one window in which ``labeled`` of the candidate's predictions got a label,
        ``correct`` of them right."""
        d = self.c.get_deployment(self.dep)
        self.sequence += 1
        cand = arm("candidate", d.rollout.candidate_version, candidate)
        cand.labeled, cand.correct = labeled, correct
        request = pb.ReportWindowRequest(
            name=f"deployments/{self.dep}",
            replica=self.replica,
            sequence=self.sequence,
            generation=d.generation,
            rollout_id=d.rollout.id,
            arms=[arm("champion", d.champion_version, champion), cand],
        )
        return self.c._call(self.c.deployments.ReportWindow, request)


def _guard(d: pb.Deployment, expression: str) -> pb.GuardResult:
    return next(g for g in d.rollout.evidence.guards if g.expression == expression)


def _labeled_until(side: LabeledSidecar, done: object, **counts: int) -> pb.Deployment:
    def once() -> pb.Deployment | None:
        side.labeled(**counts)
        d = side.c.get_deployment(side.dep)
        return d if done(d) else None  # type: ignore[operator]

    return wait_for(once, "the rollout")


def test_one_wrong_label_in_a_window_rolls_nothing_back_and_enough_wrong_ones_do(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=3600, min_requests=10**6,
        guards=[ACCURACY],
    )  # fmt: skip
    side = LabeledSidecar(c, dep)
    side.labeled(champion=41, candidate=41, labeled=1, correct=0)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    g = _guard(d, ACCURACY)
    assert not g.passed and g.error.startswith(FEW.format("window"))
    assert d.rollout.evidence.candidate.labeled == 1
    # Just short of the minimum: still no verdict.
    side.labeled(champion=41, candidate=41, labeled=19, correct=0)
    assert c.get_deployment(dep).rollout.state == pb.ROLLOUT_STATE_RUNNING
    # Enough labels, most of them wrong: the window judges the candidate.
    side.labeled(champion=41, candidate=41, labeled=20, correct=4)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK
    assert d.rollout.reason.startswith(f"guard failed: {ACCURACY}"), d.rollout.reason
    assert "candidate.accuracy=0.2" in d.rollout.reason
    assert _actions(c, dep) == ["started", "rolled_back"]


def test_a_complete_step_with_too_few_labels_is_held_not_rolled_back(
    c: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10, guards=[ACCURACY]
    )
    side = LabeledSidecar(c, dep)
    # Windows too thin for any guard (10 requests each); the step sums 30, with 2 labels.
    side.labeled(champion=10, candidate=10, labeled=1, correct=0)
    side.labeled(champion=10, candidate=10, labeled=1, correct=0)
    time.sleep(0.3)  # the step has lasted its time and counted its requests
    side.labeled(champion=10, candidate=10, labeled=0, correct=0)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 0, d.rollout.reason
    assert _guard(d, ACCURACY).error.startswith(FEW.format("step"))
    assert d.rollout.evidence.candidate.labeled == 2
    assert _actions(c, dep) == ["started"]


def test_labels_summed_over_a_step_roll_a_poor_candidate_back(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10, guards=[ACCURACY]
    )
    side = LabeledSidecar(c, dep)
    # One wrong label a window: no window judges, the step's sum does once it has 20.
    d = _labeled_until(
        side, lambda x: x.rollout.state in ENDED, champion=41, candidate=41, labeled=1, correct=0
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK
    assert d.rollout.reason.startswith(f"guard failed over the step: {ACCURACY}"), d.rollout.reason
    assert d.rollout.evidence.candidate.labeled >= 20


def test_enough_correct_labels_advance_and_promote(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10, guards=[ACCURACY]
    )
    side = LabeledSidecar(c, dep)
    d = _labeled_until(
        side, lambda x: x.rollout.state in ENDED, champion=41, candidate=41, labeled=25, correct=24
    )
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert _actions(c, dep) == ["started", "advanced", "promoted"]


def test_a_guard_with_its_own_label_minimum(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=3600, min_requests=10**6,
        guards=[GATED],
    )  # fmt: skip
    side = LabeledSidecar(c, dep)
    side.labeled(champion=41, candidate=41, labeled=1, correct=0)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert _guard(d, GATED).error.startswith(FEW.format("window"))
    side.labeled(champion=60, candidate=60, labeled=60, correct=57)
    d = c.get_deployment(dep)
    g = _guard(d, GATED)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and g.passed and not g.error
    side.labeled(champion=60, candidate=60, labeled=60, correct=30)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK
    assert d.rollout.reason.startswith(f"guard failed: {GATED}"), d.rollout.reason


@pytest.mark.parametrize("scope", ["window", "step"])
def test_each_arm_whose_accuracy_is_read_needs_the_labels(scope: str) -> None:
    def arm_values(labeled: int, correct: int) -> dict[str, float]:
        values = {"requests": 100.0, "labeled": float(labeled), "correct": float(correct)}
        if labeled:
            values["accuracy"] = correct / labeled
        return values

    rule = "candidate.accuracy >= champion.accuracy - 0.05"
    few = {"champion": arm_values(3, 0), "candidate": arm_values(40, 40)}
    (result,) = guards.evaluate([rule], few, 20, scope)
    assert not result.failed
    assert result.error.startswith(FEW.format(scope).replace("candidate", "champion"))
    enough = {"champion": arm_values(20, 20), "candidate": arm_values(40, 30)}
    (result,) = guards.evaluate([rule], enough, 20, scope)
    assert result.failed and not result.error
    # No labels at all: no accuracy, skipped for the missing value as before.
    none = {"champion": arm_values(0, 0), "candidate": arm_values(40, 40)}
    (result,) = guards.evaluate([rule], none, 20, scope)
    assert result.error == f"skipped: no value for champion.accuracy in this {scope}"
    # A guard that does not read accuracy is not held by labels.
    (result,) = guards.evaluate(["candidate.labeled >= 0.0"], few, 20, scope)
    assert result.passed
