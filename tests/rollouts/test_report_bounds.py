"""Window reports the control plane cannot store or serve back are refused whole, through real
control planes (gRPC on loopback, SQLite and PostgreSQL): counts past the per-report limit, a
shadow's absolute differences that are not a finite sum, strings PostgreSQL cannot store, and
too many predicted labels each get INVALID_ARGUMENT with nothing stored; sums of many reports
stay within int64 (the step's request count and the kept step sum), and evidence stored with
larger counts by an earlier version is still served."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, update
from sqlmodel import col, select

from controlplane.rollouts.service import SYSTEM
from controlplane.store import Store
from controlplane.store.deployment_tables import RolloutEventRow, RolloutRow, WindowReportRow
from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, arm, deployed
from tests.rollouts.harness import Plane, client_and_store

pytestmark = pytest.mark.timeout(120)

#: The most one report may count (each count, each histogram's total).
LIMIT = 2**48
INT64_MAX = 2**63 - 1


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on each backend, and a store on its database."""
    with client_and_store(tmp_path, db_url) as both:
        yield both


def _stored_reports(store: Store, dep: str) -> int:
    with store.read() as tx:
        query = select(func.count()).where(col(WindowReportRow.deployment_id) == dep)
        return int(tx.session.exec(query).one())


def _refused(send: Callable[[], Any], reason: str, field: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        send()
    assert err.value.reason == reason, err.value
    assert err.value.metadata.get("field", "").startswith(field), err.value.metadata
    return err.value


def _request(d: pb.Deployment, replica: str, sequence: int, **kw: Any) -> pb.ReportWindowRequest:
    return pb.ReportWindowRequest(
        name=d.name,
        generation=d.generation,
        rollout_id=d.rollout.id,
        replica=replica,
        sequence=sequence,
        **kw,
    )


def _send(c: Client, request: pb.ReportWindowRequest) -> pb.ReportWindowResponse:
    return c._call(c.deployments.ReportWindow, request)


def _rollout_json(store: Store, dep: str, column: str) -> Any:
    with store.read() as tx:
        row = tx.session.exec(select(RolloutRow).where(col(RolloutRow.deployment_id) == dep)).one()
        return copy.deepcopy(getattr(row, column))


def _set_rollout(store: Store, dep: str, **values: Any) -> None:
    with store.write(SYSTEM, "test") as tx:
        tx.session.exec(  # type: ignore[call-overload]
            update(RolloutRow).where(col(RolloutRow.deployment_id) == dep).values(**values)
        )


def test_counts_past_the_report_limit_are_refused_and_nothing_is_stored(
    plane: Plane, tmp_path: Path
) -> None:
    """Two replicas' counts that each fit int64 but not their sum were stored, and every read
    of the deployment then failed (INTERNAL) for good."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="ab")
    d = c.get_deployment(dep)
    champion, candidate = versions[0], versions[1]
    big = 2**62

    def counts(replica: str, **fields: Any) -> Callable[[], Any]:
        summary = pb.ArmSummary(arm="champion", version=champion, **fields)
        return lambda: _send(c, _request(d, replica, 1, arms=[summary]))

    for replica in ("b1", "b2"):
        _refused(counts(replica, requests=big, rows=big), "INVALID_REPORT", "arms.champion")
    over = LIMIT + 1
    for field in ("requests", "rows", "labeled"):
        error = _refused(counts("a", **{field: over}), "INVALID_REPORT", "arms.champion")
        assert f"champion.{field} is {over}" in error.message and str(LIMIT) in error.message
    _refused(counts("a", label_counts={1: over}), "INVALID_REPORT", "arms.champion.label_counts")
    buckets = [0] * 13 + [big] + [0] * 36
    bucket = pb.Histogram(low=1e-4, high=10, log_scale=True, counts=buckets, sum=1.0)
    _refused(counts("a", requests=10, latency=bucket), "INVALID_HISTOGRAM", "champion.latency")
    # Each bucket within the limit, their total not.
    halves = pb.Histogram(low=0, high=1, counts=[LIMIT // 2, LIMIT // 2], overflow=1)
    _refused(counts("a", requests=10, scores=halves), "INVALID_HISTOGRAM", "champion.scores")
    drift = pb.DriftSummary(
        baseline_sha256="0" * 64, rows=10, features=[pb.FeatureCounts(name="x", counts=[over])]
    )
    _refused(counts("a", requests=10, drift=drift), "INVALID_REPORT", "champion.drift")
    shadow = pb.ShadowSummary(version=candidate, pairs=over)
    _refused(
        lambda: _send(c, _request(d, "a", 1, arms=[arm("champion", champion, 10)], shadow=shadow)),
        "INVALID_REPORT",
        "shadow",
    )
    assert _stored_reports(store, dep) == 0
    # At the limit, from two replicas: taken, and the sum is served.
    for replica in ("b1", "b2"):
        top = pb.Histogram(low=0, high=1, counts=[LIMIT])
        summary = pb.ArmSummary(
            arm="champion", version=champion, requests=LIMIT, rows=LIMIT, scores=top
        )
        assert _send(c, _request(d, replica, 1, arms=[summary])).accepted
    evidence = c.get_deployment(dep).rollout.evidence
    assert evidence.champion.requests == 2 * LIMIT
    assert list(evidence.champion.scores.counts) == [2 * LIMIT]
    assert c.abort_rollout(dep).rollout.state == pb.ROLLOUT_STATE_ABORTED
    assert [e.action for e in c.list_rollout_events(dep)] == ["aborted", "started"]


def test_shadow_abs_diff_sum_must_be_a_finite_sum(plane: Plane, tmp_path: Path) -> None:
    """NaN or infinity failed on PostgreSQL (INTERNAL) and was stored on SQLite; a negative sum
    made a negative mean absolute difference."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="shadow")
    d = c.get_deployment(dep)

    def shadow(value: float) -> pb.ReportWindowRequest:
        compared = pb.ShadowSummary(version=versions[1], pairs=10, abs_diff_sum=value)
        return _request(d, "a", 1, arms=[arm("champion", versions[0], 10)], shadow=compared)

    for value in (float("nan"), float("inf"), float("-inf"), -5.0):
        error = _refused(lambda v=value: _send(c, shadow(v)), "INVALID_REPORT", "shadow")
        assert error.metadata["field"] == "shadow.abs_diff_sum"
        assert "finite number of at least 0" in error.message
    assert _stored_reports(store, dep) == 0
    assert _send(c, shadow(2.5)).accepted
    assert c.get_deployment(dep).rollout.evidence.shadow.mean_abs_diff == pytest.approx(0.25)


def test_strings_the_database_cannot_store_are_refused_or_cleaned(
    plane: Plane, tmp_path: Path
) -> None:
    """A rollout id longer than its column, a replica with NUL or control characters, and a
    sidecar's error text with NUL failed on PostgreSQL (INTERNAL)."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="ab")
    d = c.get_deployment(dep)
    champion = [arm("champion", versions[0], 5)]
    for rollout_id in ("r" * 64, "Ro-1", "ro 1", "ro-\x00"):
        request = _request(d, "a", 1, arms=champion)
        request.rollout_id = rollout_id
        error = _refused(lambda r=request: _send(c, r), "INVALID_REPORT", "rollout_id")
        assert "rollout_id of the desired state" in error.message
    for replica in ("a\x00b", "a\nb", "a\tb", "a\x1bb", "a\x7fb"):
        request = _request(d, replica, 1, arms=champion)
        error = _refused(lambda r=request: _send(c, r), "INVALID_REPORT", "replica")
        assert "control character" in error.message
    assert _stored_reports(store, dep) == 0
    # A report of another rollout (or none) is still taken.
    other = _request(d, "a", 1, arms=champion)
    other.rollout_id = "ro-" + "0" * 60
    assert _send(c, other).accepted
    # The sidecar's error text is stored without NUL or control characters, and bounded.
    text = "cannot load\x00 the model\x07: " + "x" * 10_000
    unloaded = [pb.UnloadedVersion(version=versions[1], error=text)]
    assert _send(c, _request(d, "a", 2, arms=champion, unloaded_versions=unloaded)).accepted
    (replica,) = c.get_deployment(dep).rollout.evidence.unloaded_replicas
    assert replica.error.startswith("cannot load\ufffd the model\ufffd: xxx")
    assert len(replica.error) == 500
    (event,) = [e for e in c.list_rollout_events(dep) if e.action == "candidate_unloaded"]
    assert "cannot load\ufffd the model\ufffd" in event.reason and "\x00" not in event.reason
    with store.read() as tx:
        bodies = tx.session.exec(
            select(WindowReportRow.body).where(col(WindowReportRow.deployment_id) == dep)
        ).all()
    stored = [u["error"] for body in bodies for u in body["unloaded_versions"]]
    assert stored == [replica.error]


def test_predicted_labels_are_bounded_per_report_and_when_merged(
    plane: Plane, tmp_path: Path
) -> None:
    """Every report's labels were kept in the merged window and the step's kept sum, so they
    grew with every report (and were merged and written again on each)."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=600, min_requests=10)
    d = c.get_deployment(dep)

    def labelled(labels: dict[int, int]) -> pb.ArmSummary:
        out = arm("candidate", versions[1], 10)
        out.label_counts.update(labels)
        return out

    # A sidecar that sends every label (as those before the bound did) is not refused, which
    # would stop its reports: its 1,024 most frequent labels are kept.
    too_many = labelled({k: 1 + (k >= 1000) for k in range(2000)})
    assert _send(c, _request(d, "c", 1, arms=[too_many])).accepted
    with store.read() as tx:
        (body,) = tx.session.exec(
            select(WindowReportRow.body).where(col(WindowReportRow.deployment_id) == dep)
        ).all()
    (stored,) = [a["label_counts"] for a in body["arms"] if a["arm"] == "candidate"]
    assert {int(k) for k in stored} == set(range(1000, 2000)) | set(range(24))
    # Two replicas, 1,024 labels each, none shared: the merge keeps the 1,024 most frequent.
    # (Replica c's window is merged in too, with at most 2 of any label.)
    first = labelled({k: 100 for k in range(1024)})
    second = labelled({k: 200 for k in range(1024, 2048)})
    assert _send(c, _request(d, "a", 1, arms=[first])).accepted
    assert _send(c, _request(d, "b", 1, arms=[second])).accepted
    merged = c.get_deployment(dep).rollout.evidence.candidate.label_counts
    assert set(merged) == set(range(1024, 2048))
    assert {merged[k] for k in range(1024, 2000)} == {202} and merged[2047] == 200
    kept = _rollout_json(store, dep, "step_sum")["candidate"]["label_counts"]
    assert len(kept) == 1024


def test_sums_of_many_reports_stay_within_int64(plane: Plane, tmp_path: Path) -> None:
    """The step's candidate requests (a BIGINT column) and the kept step sum add report after
    report; past int64 the column overflowed (INTERNAL on PostgreSQL) and the kept sum wrapped
    or could not be served, and a latency sum past the largest double became infinite (which
    JSON cannot hold). Counts stop at int64's largest, float sums at the largest double."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=600, min_requests=10)
    d = c.get_deployment(dep)

    def window(sequence: int) -> pb.ReportWindowRequest:
        arms = [arm("champion", versions[0], 50), arm("candidate", versions[1], 50)]
        for summary in arms:
            summary.latency.sum = 1e308
        return _request(d, "a", sequence, arms=arms)

    assert _send(c, window(1)).accepted
    # As if a long step had counted nearly int64's largest already.
    near = INT64_MAX - 10
    kept = _rollout_json(store, dep, "step_sum")
    for name in ("champion", "candidate"):
        summary = kept[name]
        summary["requests"] = summary["rows"] = near
        summary["latency"]["counts"] = [near if n else 0 for n in summary["latency"]["counts"]]
    _set_rollout(store, dep, step_sum=kept, step_candidate_requests=near)
    assert _send(c, window(2)).accepted
    kept = _rollout_json(store, dep, "step_sum")
    for name in ("champion", "candidate"):
        assert kept[name]["requests"] == kept[name]["rows"] == INT64_MAX
        assert max(kept[name]["latency"]["counts"]) == INT64_MAX
        assert kept[name]["latency"]["sum"] == sys.float_info.max
    assert _rollout_json(store, dep, "step_candidate_requests") == INT64_MAX
    d = c.get_deployment(dep)
    assert d.rollout.evidence.step_candidate_requests == INT64_MAX
    assert d.rollout.evidence.candidate.requests == 50


def test_evidence_stored_with_counts_past_int64_is_still_served(
    plane: Plane, tmp_path: Path
) -> None:
    """Evidence an earlier version stored with sums past int64 made GetDeployment,
    AbortRollout and ListRolloutEvents fail (INTERNAL) for good."""
    c, store = plane
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], strategy="ab")
    assert Sidecar(c, dep).report(champion=30, candidate=30).accepted
    evidence = _rollout_json(store, dep, "evidence")
    champion = evidence["champion"]
    champion["requests"] = champion["rows"] = 2**63
    champion["latency"]["counts"] = [2**63 if n else 0 for n in champion["latency"]["counts"]]
    champion["label_counts"] = {"1": 2**64}
    _set_rollout(store, dep, evidence=evidence)
    with store.write(SYSTEM, "test") as tx:
        tx.session.exec(  # type: ignore[call-overload]
            update(RolloutEventRow)
            .where(col(RolloutEventRow.deployment_id) == dep)
            .values(evidence=evidence)
        )
    served = c.get_deployment(dep).rollout.evidence.champion
    assert served.requests == served.rows == INT64_MAX
    assert max(served.latency.counts) == INT64_MAX and dict(served.label_counts) == {1: INT64_MAX}
    assert c.abort_rollout(dep).rollout.state == pb.ROLLOUT_STATE_ABORTED
    events = list(c.list_rollout_events(dep))
    assert [e.action for e in events] == ["aborted", "started"]
    assert all(e.evidence.champion.requests == INT64_MAX for e in events)
