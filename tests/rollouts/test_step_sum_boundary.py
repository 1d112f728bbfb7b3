"""Each report counts in exactly one step, through a real control plane (gRPC on loopback,
SQLite and PostgreSQL) fed synthetic reports of a sidecar that does not say which generation
it applied (generation 0): the report that completes a step, received at the very time the
next step begins, counts in the step it completed and not again in the next."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import arm, deployed
from tests.rollouts.harness import Plane, client_and_store
from tests.rollouts.test_step_sum import _sums

pytestmark = pytest.mark.timeout(120)

STEP_SECONDS = 2.0  # long enough that a busy machine reports within the first step


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on each backend, and a store on its database."""
    with client_and_store(tmp_path, db_url) as both:
        yield both


class OldSidecar:
    """A replica that reports under the rollout without saying which generation it applied."""

    def __init__(self, c: Client, dep: str, versions: list[int]) -> None:
        self.c, self.dep, self.versions = c, dep, versions
        self.rollout_id = c.get_deployment(dep).rollout.id
        self.sequence = 0

    def report(self, champion: int, candidate: int) -> None:
        self.sequence += 1
        self.c._call(
            self.c.deployments.ReportWindow,
            pb.ReportWindowRequest(
                name=f"deployments/{self.dep}",
                replica="old-sidecar",
                sequence=self.sequence,
                generation=0,
                rollout_id=self.rollout_id,
                arms=[
                    arm("champion", self.versions[0], champion),
                    arm("candidate", self.versions[1], candidate),
                ],
            ),
        )


def test_the_report_that_completes_a_step_counts_in_that_step_only(
    plane: Plane, tmp_path: Path
) -> None:
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[10, 50, 100], step_duration=STEP_SECONDS, min_requests=20
    )
    side = OldSidecar(c, dep, versions)
    side.report(270, 30)
    time.sleep(STEP_SECONDS + 0.1)  # the step has lasted its time
    side.report(9000, 1000)  # completes the step: it advances in this report's transaction
    d = c.get_deployment(dep)
    assert (d.rollout.step, d.rollout.state) == (1, pb.ROLLOUT_STATE_RUNNING), d.rollout.reason
    advanced = next(e for e in c.list_rollout_events(dep) if e.action == "advanced")
    assert advanced.evidence.champion.requests == 270 + 9000
    assert advanced.evidence.candidate.requests == 30 + 1000

    side.report(45, 5)  # the first report of the next step
    kept, stored = _sums(store, dep)
    for total in (kept, stored):
        assert total.champion is not None and total.candidate is not None
        assert (total.champion.requests, total.candidate.requests) == (45, 5)
