"""The running sum of a step's window reports, kept with the rollout: through real control
planes (gRPC on loopback, SQLite and PostgreSQL) fed synthetic reports, the kept sum equals
both the test's own tally and the sum of the step's stored reports, across two control-plane
replicas reporting at once (also with database sessions in different time zones), after a
step moves on, for a rollout that kept no sum yet and with reports stored by a writer that
keeps none; a step's evidence outlives the pruning of its reports; the champion's windows
before a rollout are summed once and kept, whatever rollout a sidecar said they belonged to."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlmodel import col

from controlplane.rollouts import step_sum
from controlplane.rollouts.service import SYSTEM
from controlplane.store import Store
from controlplane.store.deployment_repos import Deployments
from controlplane.store.deployment_tables import RolloutRow, WindowReportRow
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import (
    Sidecar,
    arm,
    deployed,
    report_until,
)
from tests.rollouts.harness import Plane, client_and_store

pytestmark = pytest.mark.timeout(180)

ERRORS = "candidate.error_rate <= champion.error_rate + 0.01"
LENIENT = "candidate.error_rate <= 0.5"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    """A client of a control plane of its own (SQLite), and a store on its database."""
    with client_and_store(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}") as both:
        yield both


def _ended(d: pb.Deployment) -> bool:
    return d.rollout.state != pb.ROLLOUT_STATE_RUNNING


def _sums(store: Store, dep: str) -> tuple[step_sum.StepSum, step_sum.StepSum]:
    """The kept sum of ``dep``'s current step, and the sum of the step's stored reports."""
    with store.read() as tx:
        d = Deployments(tx.session).get(dep)
        assert d is not None and d.active_rollout is not None
        r = d.active_rollout
        kept = step_sum.kept(tx, d, r)
        assert kept is not None, "no sum is kept for the current step"
        return kept, step_sum.summed(step_sum.step_reports(tx, d, r), r)


def _forget_sum(store: Store, dep: str) -> None:
    """Empty the kept sum, as for a rollout started before sums were kept."""
    with store.write(SYSTEM, "test") as tx:
        tx.session.exec(  # type: ignore[call-overload]
            update(RolloutRow).where(col(RolloutRow.deployment_id) == dep).values(step_sum={})
        )


def _same(kept: step_sum.StepSum, stored: step_sum.StepSum, tally: Counter[str]) -> None:
    for name in ("champion", "candidate"):
        a, b = getattr(kept, name), getattr(stored, name)
        assert a is not None and b is not None, name
        assert (a.requests, a.errors, a.rows) == (b.requests, b.errors, b.rows), name
        assert (a.requests, a.errors) == (tally[name], tally[f"{name}_errors"]), name
        assert a.latency is not None and b.latency is not None
        assert a.latency.counts == b.latency.counts and sum(a.latency.counts) == a.requests
        assert a.latency.sum == pytest.approx(b.latency.sum, rel=1e-12)
        assert (a.error_rate, a.latency_p99) == (b.error_rate, b.latency_p99)
    assert kept.replicas == stored.replicas
    assert kept.window_end_time == stored.window_end_time


def test_the_kept_sum_equals_the_tally_across_two_control_planes_reporting_at_once(
    tmp_path: Path, db_url: str
) -> None:
    planes = [
        start_controlplane(tmp_path / "a", db_url),
        start_controlplane(tmp_path / "b", db_url),
    ]
    store = Store.open(db_url)
    clients = [p.client() for p in planes]
    try:
        c = clients[0]
        dep, versions = deployed(c, tmp_path)
        # A long step: nothing moves while the replicas report.
        c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=600, guards=[LENIENT])
        rng = random.Random(7)
        plan = [
            [(rng.randint(1, 30), n, rng.randint(0, 2)) for n in rng.choices(range(5, 30), k=12)]
            for _ in range(4)
        ]

        def replica(i: int) -> Counter[str]:
            side = Sidecar(clients[i % 2], dep, f"pod-{i}")
            tally: Counter[str] = Counter()
            for n, (champion, candidate, errors) in enumerate(plan[i]):
                side.c = clients[(i + n) % 2]  # alternate control planes
                side.report(champion, candidate, candidate_errors=errors)
                tally.update(champion=champion, candidate=candidate, candidate_errors=errors)
            return tally

        with ThreadPoolExecutor(4) as pool:
            tally = sum(pool.map(replica, range(4)), Counter())
        # Reports outside the step add nothing: one made under no rollout, one repeated.
        outside = Sidecar(c, dep, "pod-x")
        c._call(
            c.deployments.ReportWindow,
            pb.ReportWindowRequest(
                name=f"deployments/{dep}",
                replica="pod-x",
                sequence=1,
                generation=c.get_deployment(dep).generation,
                rollout_id="",
                arms=[arm("champion", versions[0], 500)],
            ),
        )
        outside.sequence = 0  # the next report is pod-x's sequence 1 again
        repeated = outside.report(500, 500)
        assert repeated.accepted is False
        kept, stored = _sums(store, dep)
        _same(kept, stored, tally)
        assert kept.replicas == {f"pod-{i}" for i in range(4)}

        # A rollout that kept no sum yet (started before sums were kept) starts it from the
        # step's stored reports on its next report.
        _forget_sum(store, dep)
        late = Sidecar(clients[1], dep, "pod-late")
        late.report(3, 4)
        tally.update(champion=3, candidate=4)
        kept, stored = _sums(store, dep)
        _same(kept, stored, tally)

        # A report stored by a writer that keeps no sum (a control plane of an earlier
        # version, during a rolling upgrade) is taken in with the next report.
        d = c.get_deployment(dep)
        with store.write(SYSTEM, "test") as tx:
            assert Deployments(tx.session).add_report(
                WindowReportRow(
                    deployment_id=dep,
                    replica="pod-old-writer",
                    sequence=1,
                    generation=d.generation,
                    rollout_id=d.rollout.id,
                    receive_time=tx.now,
                    body={
                        "arms": [
                            {"arm": "champion", "version": versions[0], "requests": 6},
                            {"arm": "candidate", "version": versions[1], "requests": 7},
                        ]
                    },
                )
            )
        late.c = clients[0]
        late.report(1, 2)
        tally.update(champion=6 + 1, candidate=7 + 2)
        kept, stored = _sums(store, dep)
        assert kept.candidate is not None and kept.champion is not None
        assert (kept.champion.requests, kept.candidate.requests) == (
            tally["champion"],
            tally["candidate"],
        )
        assert "pod-old-writer" in kept.replicas
    finally:
        for client in clients:
            client.close()
        for p in planes:
            p.handle.stop(0)
        store.close()


def test_a_new_step_starts_a_new_sum(plane: Plane, tmp_path: Path) -> None:
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10)
    side = Sidecar(c, dep)
    report_until(side, lambda d: d.rollout.step == 1, champion=30, candidate=30)
    side.report(0, 3)
    side.report(0, 5, candidate_errors=1)
    kept, stored = _sums(store, dep)
    assert kept.champion is None and stored.champion is None
    assert kept.candidate is not None and stored.candidate is not None
    assert (kept.candidate.requests, kept.candidate.errors) == (8, 1)
    assert (stored.candidate.requests, stored.candidate.errors) == (8, 1)


def test_a_steps_evidence_outlives_the_pruning_of_its_reports(plane: Plane, tmp_path: Path) -> None:
    """Every report is pruned right after it is taken in, as a retention shorter than the step
    would: the step still sums every window, so thin windows of a failing candidate (4
    requests each, below the 20 a guard needs) roll it back once five are in."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep,
        versions[1],
        steps=[50, 100],
        step_duration=0.1,
        min_requests=10,
        guards=[ERRORS],
    )
    side = Sidecar(c, dep)
    for _ in range(8):
        time.sleep(0.03)
        side.report(4, 4, candidate_errors=4)
        with store.write(SYSTEM, "test") as tx:
            Deployments(tx.session).prune_reports(tx.now)
        d = c.get_deployment(dep)
        if d.rollout.state != pb.ROLLOUT_STATE_RUNNING:
            break
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the step: {ERRORS}")
    candidate = d.rollout.evidence.candidate
    assert candidate.requests >= 20 and candidate.errors == candidate.requests
    assert d.rollout.evidence.scope == pb.EVIDENCE_SCOPE_STEP


def test_the_champions_windows_before_the_rollout_are_summed_once_and_kept(
    plane: Plane, tmp_path: Path
) -> None:
    """A single 100% step compares the candidate with the champion's windows from before the
    rollout; once a step needed them they are kept, so pruning them changes nothing."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(champion=10, champion_errors=1)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.1, min_requests=10)
    time.sleep(0.2)
    side.report(candidate=5)
    side.report(candidate=5)  # the step is complete, with too few requests for a guard
    with store.read() as tx:
        row = tx.session.get(RolloutRow, (dep, c.get_deployment(dep).rollout.id))
        assert row is not None
        kept = row.champion_before["summary"]
    assert (kept["requests"], kept["errors"]) == (30, 3)
    with store.write(SYSTEM, "test") as tx:
        tx.session.exec(  # type: ignore[call-overload]
            delete(WindowReportRow).where(col(WindowReportRow.rollout_id) == "")
        )
    side.report(candidate=5)
    side.report(candidate=5)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert all(g.passed and not g.error for g in d.rollout.evidence.guards)


@pytest.mark.postgres
def test_control_planes_in_different_time_zones_keep_one_sum(tmp_path: Path, pg_url: str) -> None:
    """Two control planes whose database sessions use different time zones read the step's
    start time back differently; both must recognise the kept sum as the step's (else each
    report would start it again from the stored reports, losing those pruned)."""
    tokyo = f"{pg_url}?options=-c%20timezone%3DAsia/Tokyo"
    planes = [start_controlplane(tmp_path / "a", pg_url), start_controlplane(tmp_path / "b", tokyo)]
    store = Store.open(pg_url)
    clients = [p.client() for p in planes]
    try:
        dep, versions = deployed(clients[0], tmp_path)
        clients[0].start_rollout(
            dep, versions[1], steps=[50, 100], step_duration=600, guards=[LENIENT]
        )
        side = Sidecar(clients[0], dep, "pod")
        for n in range(6):
            side.c = clients[n % 2]
            side.report(5, 4)
            with store.write(SYSTEM, "test") as tx:  # prune this deployment's reports
                tx.session.exec(  # type: ignore[call-overload]
                    delete(WindowReportRow).where(col(WindowReportRow.deployment_id) == dep)
                )
        with store.read() as tx:
            d = Deployments(tx.session).get(dep)
            assert d is not None and d.active_rollout is not None
            kept = step_sum.kept(tx, d, d.active_rollout)
        assert kept is not None and kept.champion is not None and kept.candidate is not None
        assert (kept.champion.requests, kept.candidate.requests) == (30, 24)
    finally:
        for client in clients:
            client.close()
        for p in planes:
            p.handle.stop(0)
        store.close()


def test_the_champions_windows_before_a_second_rollout_count_whatever_rollout_they_name(
    plane: Plane,
    tmp_path: Path,
) -> None:
    """Sidecars of an earlier version report windows served after a rollout ended under that
    rollout's id; they are still the champion's windows before the next rollout."""
    c, _ = plane
    dep, versions = deployed(c, tmp_path)
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(champion=10)
    c.start_rollout(dep, versions[1], steps=[100], step_duration=0.1, min_requests=10)
    d = report_until(side, _ended, candidate=30)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    for n in range(3):
        c._call(
            c.deployments.ReportWindow,
            pb.ReportWindowRequest(
                name=f"deployments/{dep}",
                replica="old-sidecar",
                sequence=n + 1,
                generation=d.generation,
                rollout_id=d.rollout.id,  # the ended rollout
                arms=[arm("champion", versions[1], 10, 1)],
            ),
        )
    c.start_rollout(dep, versions[2], steps=[100], step_duration=0.1, min_requests=10)
    time.sleep(0.2)
    d = report_until(side, _ended, candidate=5)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert all(g.passed and not g.error for g in d.rollout.evidence.guards)


def test_ab_keeps_the_sum_of_its_phase(plane: Plane, tmp_path: Path) -> None:
    """A/B and shadow phases are judged over their sum too (for a failure only), so it is
    kept for them as for canary steps."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="ab", split=50)
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(10, 10)
    with store.read() as tx:
        d = Deployments(tx.session).get(dep)
        assert d is not None and d.active_rollout is not None
        total = step_sum.kept(tx, d, d.active_rollout)
        assert total is not None and total.champion is not None and total.candidate is not None
        assert (total.champion.requests, total.candidate.requests) == (30, 30)
