"""A canary step does not complete while the windows of the step may still be on their way,
through a real control plane (gRPC on loopback, SQLite) fed synthetic window reports.

After an outage a sidecar sends its queued windows one per call, oldest first, by then after
the step's duration: the oldest must not complete the step while the replica says more are
queued behind it (``queued_windows``), or the rest, reported under the step's generation,
would count in no step. And a step that began before a control plane (re)started is not
completed until the replicas have had a few report intervals to say whether they hold a
backlog."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import arm, deployed, wait_for

pytestmark = pytest.mark.timeout(120)

ERRORS = "candidate.error_rate <= champion.error_rate + 0.01"
STEP_SECONDS = 1.0


class Replica:
    """A sidecar replica reporting windows of the step that was current when it was made (its
    generation), as a sidecar sending its queued windows after an outage does."""

    def __init__(self, c: Client, dep: str, name: str = "pod-a") -> None:
        self.c, self.dep, self.name = c, dep, name
        d = c.get_deployment(dep)
        self.generation, self.rollout = d.generation, d.rollout
        self.sequence = 0

    def report(
        self, champion: int, candidate: int, *, errors: int = 0, queued: int = 0
    ) -> pb.ReportWindowResponse:
        """One window; ``errors`` of the candidate's requests failed; ``queued`` windows are
        said to wait behind it."""
        self.sequence += 1
        request = pb.ReportWindowRequest(
            name=f"deployments/{self.dep}",
            replica=self.name,
            sequence=self.sequence,
            generation=self.generation,
            rollout_id=self.rollout.id,
            arms=[
                arm("champion", self.rollout.champion_version, champion),
                arm("candidate", self.rollout.candidate_version, candidate, errors),
            ],
            queued_windows=queued,
        )
        return self.c._call(self.c.deployments.ReportWindow, request)


def _actions(c: Client, dep: str) -> list[str]:
    return [e.action for e in reversed(list(c.list_rollout_events(dep)))]


def _canary(c: Client, tmp_path: Path) -> str:
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep,
        versions[1],
        steps=[50, 100],
        step_duration=STEP_SECONDS,
        min_requests=10,
        guards=[ERRORS],
    )
    return dep


def _at(c: Client, dep: str) -> tuple[int, int]:
    r = c.get_deployment(dep).rollout
    return r.state, r.step


RUNNING_STEP_0 = (pb.ROLLOUT_STATE_RUNNING, 0)


def test_a_backlog_holds_the_step_and_its_failures_roll_the_candidate_back(
    c: Client, tmp_path: Path
) -> None:
    dep = _canary(c, tmp_path)
    pod = Replica(c, dep)
    pod.report(10, 10)  # before the outage: healthy, too few for a guard on one window
    time.sleep(STEP_SECONDS + 0.2)  # the step's time passes while the control plane is away
    # The backlog arrives oldest first. Its first window completes the step's time and
    # requests, and every guard passes over the step so far; but 3 windows are queued behind.
    pod.report(10, 10, queued=3)
    assert _at(c, dep) == RUNNING_STEP_0
    # The next windows of the step, in which the candidate failed, count in it.
    pod.report(10, 10, errors=10, queued=2)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the step: {ERRORS}")
    assert d.rollout.evidence.candidate.requests == 30
    assert d.rollout.evidence.candidate.errors == 10
    assert _actions(c, dep) == ["started", "rolled_back"]


def test_a_step_with_nothing_queued_moves_on_the_first_report_after_it_is_complete(
    c: Client, tmp_path: Path
) -> None:
    dep = _canary(c, tmp_path)
    pod = Replica(c, dep)
    pod.report(10, 10)
    time.sleep(STEP_SECONDS + 0.2)
    pod.report(10, 10, queued=0)
    assert _at(c, dep) == (pb.ROLLOUT_STATE_RUNNING, 1)
    assert _actions(c, dep) == ["started", "advanced"]


def test_one_replicas_backlog_holds_the_step_until_its_last_window_arrives(
    c: Client, tmp_path: Path
) -> None:
    dep = _canary(c, tmp_path)
    a, b = Replica(c, dep, "pod-a"), Replica(c, dep, "pod-b")
    a.report(10, 10)
    time.sleep(STEP_SECONDS + 0.2)
    a.report(10, 10, queued=2)
    b.report(10, 10)  # pod-b has nothing queued; pod-a's newest report still says 2
    assert _at(c, dep) == RUNNING_STEP_0
    a.report(10, 10, queued=1)
    assert _at(c, dep) == RUNNING_STEP_0
    a.report(10, 10, queued=0)  # the last of pod-a's backlog
    assert _at(c, dep) == (pb.ROLLOUT_STATE_RUNNING, 1)
    advanced = next(e for e in c.list_rollout_events(dep) if e.action == "advanced")
    assert advanced.evidence.candidate.requests == 50


def test_a_negative_queued_windows_is_refused(c: Client, tmp_path: Path) -> None:
    dep = _canary(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        Replica(c, dep).report(10, 10, queued=-1)
    assert err.value.metadata["field"] == "queued_windows"
    assert not c.get_deployment(dep).rollout.evidence.candidate.requests


def test_a_step_begun_before_a_restart_waits_for_the_replicas_to_report(tmp_path: Path) -> None:
    """After a restart every sidecar gets ``max_age`` (``stale_factor`` report intervals) to
    come back and say whether it holds a backlog before a step that straddled the outage is
    judged."""
    interval = 1.5
    max_age = timedelta(seconds=3 * interval)  # the default stale_factor
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    first = start_controlplane(tmp_path, url, report_interval_seconds=interval)
    try:
        with first.client() as c:
            dep = _canary(c, tmp_path)
            pod = Replica(c, dep)
            pod.report(10, 10)
    finally:
        first.handle.stop(0)
    time.sleep(STEP_SECONDS + 0.2)  # the step's time passes while the control plane is down
    before_restart = datetime.now(UTC)
    second = start_controlplane(tmp_path, url, report_interval_seconds=interval)
    try:
        with second.client() as c:
            pod.c = c
            # Complete by time and requests, every guard passing over the step: held, as
            # the replicas may not all have reported yet.
            pod.report(10, 10)
            assert _at(c, dep) == RUNNING_STEP_0
            assert _actions(c, dep) == ["started"]

            def moved() -> bool:
                pod.report(10, 10)
                return _at(c, dep) != RUNNING_STEP_0

            wait_for(moved, "the step to move on once the replicas had time to report", 60)
            assert _at(c, dep) == (pb.ROLLOUT_STATE_RUNNING, 1)
            advanced = next(e for e in c.list_rollout_events(dep) if e.action == "advanced")
            assert advanced.create_time.ToDatetime(UTC) >= before_restart + max_age
    finally:
        second.handle.stop(0)
