"""A latency histogram whose buckets change in the middle of a step (a sidecar upgraded once
the replicas of the old layout have stopped reporting) never wedges the rollout, through a real
control plane (gRPC on loopback, SQLite) fed synthetic window reports: the report is taken,
the guards still run on it, and the step's latency histogram restarts from the new layout,
which its evidence says; reports of different layouts in one latest window are still refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until
from tests.rollouts.test_step_verdict import ENDED, _actions

pytestmark = pytest.mark.timeout(120)

LATENCY = "candidate.latency_p99 <= 1.5 * champion.latency_p99 + 0.005"


@pytest.fixture
def quick(tmp_path: Path) -> Any:
    """A client of a control plane whose latest window is 1.5 s (report interval 0.5 s)."""
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", report_interval_seconds=0.5
    )
    with cp.client() as client:
        yield client
    cp.handle.stop(0)


def _arm(name: str, version: int, requests: int, errors: int = 0) -> pb.ArmSummary:
    """An arm whose latency histogram has 60 log buckets (the other replicas' have 50)."""
    h = pb.Histogram(low=1e-4, high=10.0, log_scale=True, counts=[0] * 60, sum=0.002 * requests)
    h.counts[18] = requests  # about 2 ms
    return pb.ArmSummary(
        arm=name, version=version, requests=requests, errors=errors, rows=requests, latency=h
    )


class NewSidecar(Sidecar):
    """A replica of a newer sidecar build: 60 latency buckets."""

    def report(self, champion: int = 0, candidate: int = 0, **kw: Any) -> Any:
        d = self.c.get_deployment(self.dep)
        arms = []
        if champion:
            arms.append(_arm("champion", d.champion_version, champion))
        if candidate:
            arms.append(
                _arm("candidate", d.rollout.candidate_version, candidate, kw.get("errors", 0))
            )
        return super().report(extra=arms)


def test_a_failing_candidate_is_rolled_back_after_the_latency_layout_changed(
    quick: Client, tmp_path: Path
) -> None:
    c = quick
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=3600, min_requests=10)
    assert Sidecar(c, dep, "pod-a").report(champion=100, candidate=100).accepted
    new = NewSidecar(c, dep, "pod-b")
    # pod-a's window is still in the latest window: replicas' layouts must agree there.
    with pytest.raises(InvalidArgument) as err:
        new.report(champion=100, candidate=100)
    assert err.value.reason == "HISTOGRAM_LAYOUT_MISMATCH"
    time.sleep(2.0)  # pod-a stopped reporting: its window has aged out
    answer = new.report(champion=100, candidate=100, errors=100)
    assert answer.accepted
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith("guard failed: candidate.error_rate"), d.rollout.reason
    assert d.champion_version == versions[0]


def test_a_step_moves_after_the_latency_layout_changed_and_says_so(
    quick: Client, tmp_path: Path
) -> None:
    c = quick
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=1.0, min_requests=10)
    assert Sidecar(c, dep, "pod-a").report(champion=100, candidate=100).accepted
    time.sleep(2.0)
    new = NewSidecar(c, dep, "pod-b")
    d = report_until(
        new,
        lambda x: x.rollout.step == 1 or x.rollout.state in ENDED,
        champion=100,
        candidate=100,
        seconds=20,
    )
    # On a loaded machine the last 1 s step may have passed too before the poll saw step 1.
    moved = d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 1
    assert moved or d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert _actions(c, dep)[:2] == ["started", "advanced"]
    events = reversed(list(c.list_rollout_events(dep)))
    advanced = next(e for e in events if e.action == "advanced")
    guards = {g.expression: g for g in advanced.evidence.guards}
    assert guards[LATENCY].passed and not guards[LATENCY].error
    assert "candidate.latency restarted in this step" in advanced.reason, advanced.reason
    assert "60 log buckets" in advanced.reason
    # The step's counts were kept: pod-a's 100 candidate requests are in the sum.
    assert advanced.evidence.candidate.requests >= 200
