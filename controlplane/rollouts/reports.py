"""Window reports: store each, merge the latest window, judge it, and act on the verdict.

On every accepted report, in one transaction: the report is stored (a repeated (replica,
sequence) is acknowledged with ``accepted=False`` and changes nothing); the candidate's
requests count toward the current canary step when the sidecar applied the step's generation;
the latest window (each replica's newest report of the same rollout received within
``stale_factor`` report intervals) is merged and its derived fields computed; guards are
evaluated on it, less any arm the phase never has (:func:`~controlplane.rollouts.guards.in_phase`,
as over a whole step), and a failed guard rolls the rollout back at once; a canary step whose
time and requests are complete, or a blue/green shadow or watch phase whose time is, moves only
when every guard also passes on the whole step or phase (see :mod:`controlplane.rollouts.steps`;
one that fails there rolls back) and no replica says it cannot load the candidate (see
:mod:`controlplane.rollouts.unloaded`, which also records the events) and none of its windows
may still be on their way: no replica's newest report says it holds windows still to send
(``queued_windows``: a sidecar sends a backlog after an outage one window per call, oldest
first, so the first of them would otherwise complete the step and the rest count in no step),
and, for a step or phase that began before this process started, the replicas have had
``max_age`` (``stale_factor`` report intervals) since then to say so; a guard that fails is
never held. An A/B or shadow rollout, which never moves on its own, is judged over its whole
phase too once the version under test has answered its ``min_requests`` requests there, and
rolled back when a guard fails (:func:`~controlplane.rollouts.steps.judge_open`); drift past the
deployment's thresholds, judged over windows of at least ``min_rows`` rows summed across
reports (see :mod:`controlplane.rollouts.drift_windows`), records a ``drift`` event (outside
its cooldown) and, after commit, calls the retraining hooks.

Before anything is stored, :func:`check_report` refuses (INVALID_ARGUMENT, nothing written) a
report the control plane could not store or serve back: a count below 0
(``queued_windows`` included) or above :data:`~controlplane.rollouts.histograms.MAX_COUNT`
(histogram buckets and totals included), a shadow ``abs_diff_sum`` that is not a finite number
of at least 0, a ``rollout_id`` that is not a rollout id, or a replica name with control
characters; a sidecar's error text is kept without control characters and bounded, and an
arm's predicted labels are cut to the :data:`~controlplane.rollouts.merge.MAX_LABELS` most
frequent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from controlplane.domain.deployments import (
    PAUSED,
    ArmSummary,
    Deployment,
    DriftSummary,
    Evidence,
    GuardResult,
    Rollout,
    WindowReport,
)
from controlplane.names import check_id
from controlplane.rollouts import (
    drift,
    drift_windows,
    guards,
    histograms,
    machine,
    step_sum,
    steps,
    transitions,
    unloaded,
)
from controlplane.rollouts.histograms import MAX_COUNT, MAX_SUM
from controlplane.rollouts.hooks import HookRunner
from controlplane.rollouts.machine import AUTOMATIC_ACTOR
from controlplane.rollouts.merge import MAX_LABELS, merge_labels, merge_reports
from controlplane.rollouts.notifier import GenerationHub
from controlplane.services.deployments import parse_deployment, require_deployment
from controlplane.store import Store, WriteTx
from controlplane.store.deployment_json import to_json
from controlplane.store.deployment_repos import Deployments
from controlplane.store.deployment_tables import WindowReportRow
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.server.context import RequestContext

log = structlog.get_logger("modelplane.controlplane.rollouts")

ARMS = ("champion", "candidate")
MAX_REPLICA_LENGTH = 200
#: What a replica name may not contain: NUL and the other control characters.
_REPLICA_BAD = re.compile(r"[\x00-\x1f\x7f]")
#: What a sidecar's error text may not carry into stored events: NUL and the other control
#: characters but tab and newline (each replaced with U+FFFD).
_ERROR_BAD = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _bad(message: str, field: str, reason: str = "INVALID_REPORT") -> InvalidArgument:
    return InvalidArgument(message, reason=reason, metadata={"field": field})


def _check_counts(what: str, field: str, counts: dict[str, int | Iterable[int]]) -> None:
    """Every count (name → its value or values) non-negative and at most :data:`MAX_COUNT`."""
    for name, values in counts.items():
        for value in (values,) if isinstance(values, int) else values:
            if value < 0:
                raise _bad(f"{what}.{name} is {value}: counts cannot be negative", field)
            if value > MAX_COUNT:
                raise _bad(
                    f"{what}.{name} is {value}: one report counts at most {MAX_COUNT}; report "
                    "shorter windows",
                    field,
                )


def _check_drift(d: DriftSummary, what: str) -> None:
    _check_counts(what, what, {"rows": d.rows})
    for f in d.features:
        _check_counts(
            f"{what}.features[{f.name[:40]!r}]",
            what,
            {"counts": f.counts, "out_of_range": f.out_of_range, "missing": f.missing},
        )


def _clean_error(text: str) -> str:
    """A sidecar's error text as stored: at most :data:`unloaded.MAX_ERROR` characters, its
    control characters (NUL included) replaced."""
    return _ERROR_BAD.sub("\ufffd", text[: unloaded.MAX_ERROR])


def check_report(report: WindowReport) -> WindowReport:
    """INVALID_ARGUMENT for a report that cannot be right, before anything is stored; the
    report as it is stored (the error texts of ``unloaded_versions`` cleaned and bounded)."""
    if not report.replica or len(report.replica) > MAX_REPLICA_LENGTH:
        raise _bad(
            f"replica must name the sidecar replica (1-{MAX_REPLICA_LENGTH} characters)", "replica"
        )
    if _REPLICA_BAD.search(report.replica):
        raise _bad(
            f"replica {report.replica[:80]!r} contains a control character; name the replica "
            "with printable characters",
            "replica",
        )
    if report.rollout_id:
        try:
            check_id(report.rollout_id, "rollout_id")
        except InvalidArgument:
            raise _bad(
                f"rollout_id {report.rollout_id[:80]!r} is not a rollout id (1-63 lowercase "
                "letters, digits and '-'); send the rollout_id of the desired state the sidecar "
                "applied, or none",
                "rollout_id",
            ) from None
    if report.sequence < 0 or report.generation < 0:
        raise _bad("sequence and generation must not be negative", "sequence")
    if report.queued_windows < 0:
        raise _bad(
            f"queued_windows is {report.queued_windows}: it counts the windows the replica "
            "still holds to send, 0 or more",
            "queued_windows",
        )
    if report.start_time and report.end_time and report.end_time < report.start_time:
        raise _bad("end_time is before start_time", "end_time")
    seen = set()
    for a in report.arms:
        if a.arm not in ARMS:
            raise _bad(f"arm {a.arm!r} is invalid: use champion or candidate", "arms.arm")
        if a.arm in seen:
            raise _bad(f"arm {a.arm!r} appears twice; send one summary per arm", "arms.arm")
        seen.add(a.arm)
        field = f"arms.{a.arm}"
        _check_counts(
            a.arm,
            field,
            {
                "requests": a.requests,
                "errors": a.errors,
                "rows": a.rows,
                "labeled": a.labeled,
                "correct": a.correct,
            },
        )
        _check_counts(a.arm, f"{field}.label_counts", {"label_counts": a.label_counts.values()})
        if a.errors > a.requests or a.correct > a.labeled:
            raise _bad(f"{a.arm}: errors exceed requests or correct exceeds labeled", field)
        for h, what in ((a.latency, "latency"), (a.scores, "scores")):
            if h is not None:
                histograms.check(h, f"{a.arm}.{what}")
        if a.drift is not None:
            _check_drift(a.drift, f"{a.arm}.drift")
    s = report.shadow
    if s is not None:
        _check_counts(
            "shadow",
            "shadow",
            {
                "pairs": s.pairs,
                "disagreements": s.disagreements,
                "errors": s.errors,
                "dropped": s.dropped,
            },
        )
        if s.disagreements > s.pairs:
            raise _bad("shadow: disagreements exceed pairs", "shadow")
        if not math.isfinite(s.abs_diff_sum) or s.abs_diff_sum < 0:
            raise _bad(
                f"shadow.abs_diff_sum is {s.abs_diff_sum}: it is a sum of absolute differences, "
                "a finite number of at least 0",
                "shadow.abs_diff_sum",
            )
        for h, what in (
            (s.champion_scores, "champion_scores"),
            (s.shadow_scores, "shadow_scores"),
            (s.latency, "latency"),
        ):
            if h is not None:
                histograms.check(h, f"shadow.{what}")
    if any(u.version <= 0 for u in report.unloaded):
        raise _bad("unloaded_versions: versions are positive numbers", "unloaded_versions")
    cleaned = tuple(replace(u, error=_clean_error(u.error)) for u in report.unloaded)
    if cleaned != report.unloaded:
        report = replace(report, unloaded=cleaned)
    if any(
        a.drift is not None and a.drift.baseline_sha256 != _bare(a.drift.baseline_sha256)
        for a in report.arms
    ):
        # Stored with the bare digest, so that replicas spelling it either way merge.
        arms = tuple(
            replace(a, drift=replace(a.drift, baseline_sha256=_bare(a.drift.baseline_sha256)))
            if a.drift is not None
            else a
            for a in report.arms
        )
        report = replace(report, arms=arms)
    if any(len(a.label_counts) > MAX_LABELS for a in report.arms):
        # Sidecars that predate the bound send every label: they are kept, as a merge keeps them.
        arms = tuple(
            replace(a, label_counts=merge_labels([a.label_counts]))
            if len(a.label_counts) > MAX_LABELS
            else a
            for a in report.arms
        )
        report = replace(report, arms=arms)
    return report


@dataclass(frozen=True)
class ReportResult:
    """What a report led to."""

    generation: int
    accepted: bool
    moved: bool = False


def _bare(sha: str) -> str:
    return sha.removeprefix("sha256:")


def _check_incarnation(d: Deployment, report: WindowReport) -> None:
    """FAILED_PRECONDITION (DEPLOYMENT_REPLACED) when ``report`` was counted under another
    deployment of the name, one since deleted (its sidecar has not yet applied the new one's
    state): its records are no evidence about this one."""
    said = report.deployment_create_time
    if said is None or said == d.create_time:
        return
    raise FailedPrecondition(
        f"the report was counted under deployments/{d.id} created at {said.isoformat()}, "
        f"which was deleted; the deployment of that name now was created at "
        f"{d.create_time.isoformat()}: report windows of its desired state instead",
        reason="DEPLOYMENT_REPLACED",
        metadata={"deployment": f"deployments/{d.id}"},
    )


class ReportService:
    """Takes window reports (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        hub: GenerationHub,
        hooks: HookRunner,
        profiles: drift.ProfileCache,
        *,
        report_interval: float = 2.0,
        stale_factor: float = 3.0,
        guard_min_requests: int = 20,
        switch_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.hooks = hooks
        self.profiles = profiles
        self.max_age = timedelta(seconds=report_interval * stale_factor)
        self.guard_min_requests = guard_min_requests
        self.switch_seconds = switch_seconds
        #: When this process began taking reports: a step or phase that began before it may
        #: have windows queued at sidecars that have not reported since (see :meth:`_backlog`).
        self.started = datetime.now(UTC)

    def report(self, ctx: RequestContext, name: str, report: WindowReport) -> ReportResult:
        deployment_id = parse_deployment(name)
        report = check_report(replace(report, deployment_id=deployment_id))
        fire: list[tuple[str, str, dict[str, Any]]] = []
        with self.store.write(ctx, "ReportWindow") as tx:
            repo = Deployments(tx.session)
            d = require_deployment(tx, deployment_id)
            # Received once the lock is held: after every transition committed before it (see
            # step_sum: each report counts in exactly one step).
            tx.restamp()
            _check_incarnation(d, report)
            baselines = drift.Baselines(tx, d.model_id, self.profiles)
            self._check_drift_layout(report, baselines)
            if not repo.add_report(_row(report, tx)):
                return ReportResult(d.generation, False)
            r = d.active_rollout
            current = r is not None and report.rollout_id == r.id
            if current and r is not None:
                self._count_step(repo, d, r, report)
                step_sum.take_in(tx, d, r)
            evidence = self._merged(tx, d, report.rollout_id, r if current else None, baselines)
            moved = False
            if current and r is not None:
                evidence = self._track_unloaded(tx, d, r, report, evidence)
                moved = self._judge(tx, d, r, evidence, baselines)
            if moved:
                # Drift is judged on the deployment as this report left it: a rollout it
                # rolled back (or promoted) is no longer in progress.
                d = require_deployment(tx, deployment_id)
            judged = drift_windows.take_in(tx, d, report, baselines)
            fire = drift_windows.respond(tx, d, judged, evidence)
            row = repo.row(deployment_id)
            generation = row.generation if row else d.generation
        if moved:
            self.hub.changed(deployment_id)
        for dep_id, url, event in fire:
            self.hooks.fire(dep_id, url, event)
        return ReportResult(generation, True, moved)

    def _check_drift_layout(self, report: WindowReport, baselines: drift.Baselines) -> None:
        for a in report.arms:
            if a.drift is None:
                continue
            expected, profile = baselines(a.version)
            if not expected:
                continue
            if _bare(a.drift.baseline_sha256) != expected:
                raise _bad(
                    f"{a.arm}.drift was counted against baseline {a.drift.baseline_sha256[:16]!r}"
                    f"; version {a.version}'s baseline is {expected[:16]}",
                    f"arms.{a.arm}.drift",
                    "BASELINE_MISMATCH",
                )
            if profile is not None:
                drift.check_layout(a.drift, profile, f"{a.arm}.drift")

    def _count_step(
        self, repo: Deployments, d: Deployment, r: Rollout, report: WindowReport
    ) -> None:
        """Count the candidate's requests toward the step when the sidecar applied the step's
        desired state (its generation) or did not say which it applied."""
        candidate = report.arm("candidate")
        if candidate is None or candidate.version != r.candidate_version or not candidate.requests:
            return
        row = repo.rollout_row(d.id, r.id)
        if row is None:
            return
        if report.generation == 0 or report.generation >= row.step_generation:
            # The count stays at int64's largest rather than overflow the column.
            counted = min(candidate.requests, MAX_SUM - row.step_candidate_requests)
            if counted > 0:
                repo.add_step_requests(d.id, r.id, counted)

    def _track_unloaded(
        self, tx: WriteTx, d: Deployment, r: Rollout, report: WindowReport, evidence: Evidence
    ) -> Evidence:
        """``evidence`` with the replicas that cannot load the candidate after ``report``;
        records an event when one starts or stops saying so."""
        row = Deployments(tx.session).rollout_row(d.id, r.id)
        before = unloaded.stored(row.evidence if row is not None else None)
        now, changes = unloaded.track(before, report, r, tx.now, self.max_age)
        evidence = replace(evidence, unloaded=now)
        for change in changes:
            transitions.record_event(
                tx, d, r, change.action, change.reason, AUTOMATIC_ACTOR, evidence, None, None
            )
            log.warning(change.action, deployment=d.id, rollout=r.id, reason=change.reason)
        return evidence

    def _merged(
        self,
        tx: WriteTx,
        d: Deployment,
        rollout_id: str,
        r: Rollout | None,
        baselines: drift.Baselines,
    ) -> Evidence:
        repo = Deployments(tx.session)
        reports = repo.latest_reports(d.id, rollout_id, tx.now - self.max_age)
        versions = {"champion": d.champion_version}
        if r is not None:
            versions = {"champion": r.champion_version, "candidate": r.candidate_version}
        champion, candidate, shadow = merge_reports(reports, versions)
        ends = [x.end_time for x in reports if x.end_time is not None]
        steps = 0
        if r is not None:
            tx.session.expire_all()
            row = repo.rollout_row(d.id, r.id)
            steps = row.step_candidate_requests if row else 0
        return Evidence(
            champion=_scored(d, champion, baselines),
            candidate=_scored(d, candidate, baselines),
            shadow=shadow,
            window_end_time=max(ends) if ends else tx.now,
            replica_count=len(reports),
            step_candidate_requests=steps,
        )

    def _judge(
        self, tx: WriteTx, d: Deployment, r: Rollout, evidence: Evidence, baselines: drift.Baselines
    ) -> bool:
        """Evaluate the guards on the window, without the arms the phase never has; roll back
        on a failure, else advance a completed step."""
        repo = Deployments(tx.session)
        evidence = guards.in_phase(evidence, r.phase)
        thin = guards.champion_minimum(r.candidate_percent, self.guard_min_requests)
        values = guards.variables(evidence, r.champion_reference, thin)
        judged = guards.judge(
            r.effective_guards,
            values,
            r.phase,
            self.guard_min_requests,
            thin,
            drift_min_rows=d.drift_thresholds.min_rows,
        )
        results = judged.results  # a failure of a default standing in says so in its detail
        evidence = replace(evidence, guards=results)
        champion = evidence.champion
        reference = (
            champion
            if champion is not None and champion.requests >= self.guard_min_requests
            else None
        )
        repo.set_evidence(d.id, r.id, to_json(evidence), to_json(reference))
        failure = guards.first_failure(results)
        if failure is not None:
            return self._roll_back(tx, d, r, failure, evidence, "")
        fresh = replace(r, step_candidate_requests=evidence.step_candidate_requests)
        if r.strategy in steps.OPEN_ENDED or r.state == PAUSED:
            # A paused step or phase never completes: it is judged as an open one is.
            return self._judge_open(tx, d, fresh, evidence, baselines)
        due = machine.due(fresh, tx.now, self.switch_seconds)
        if due is None:
            return False
        if due.needs_verdict:
            verdict = steps.judge_step(
                tx,
                d,
                fresh,
                self.guard_min_requests,
                lambda a: _scored(d, a, baselines),
                evidence.unloaded,
            )
            evidence = verdict.evidence
            scope = steps.scope(r)
            repo.set_evidence(d.id, r.id, to_json(evidence), to_json(verdict.reference))
            if verdict.failure is not None:
                return self._roll_back(tx, d, r, verdict.failure, evidence, f" over the {scope}")
            if not verdict.passed:
                log.debug(
                    f"{scope} complete, held",
                    deployment=d.id,
                    rollout=r.id,
                    waiting=steps.describe(verdict),
                )
                return False
            backlog = self._backlog(tx, d, r)
            if backlog:
                log.debug(
                    f"{scope} complete, held for queued windows",
                    deployment=d.id,
                    rollout=r.id,
                    waiting=backlog,
                )
                return False
            why = f"{due.reason}; {steps.passed_reason(verdict, d, r)}"
            due = replace(due, reason=why, rollout=replace(due.rollout, reason=why))
        moved = transitions.apply(tx, d, due, AUTOMATIC_ACTOR, evidence=evidence, strict=False)
        return moved is not None

    def _backlog(self, tx: WriteTx, d: Deployment, r: Rollout) -> str:
        """Why the windows of ``r``'s step or phase may not all be in yet ("" when they are):
        a replica's newest report says it holds windows still to send (a backlog after an
        outage, sent oldest first), or the step or phase began before this process started
        and the replicas have not yet had ``max_age`` (a few report intervals) to say so."""
        latest = Deployments(tx.session).latest_reports(d.id, r.id, tx.now - self.max_age)
        queued = {x.replica: x.queued_windows for x in latest if x.queued_windows > 0}
        if queued:
            return "; ".join(f"replica {k} has {n} windows queued" for k, n in queued.items())
        if r.phase_start_time < self.started and tx.now - self.started < self.max_age:
            return (
                f"the {steps.scope(r)} began before this control plane started at "
                f"{self.started.isoformat()}; replicas have until "
                f"{(self.started + self.max_age).isoformat()} to report their queued windows"
            )
        return ""

    def _judge_open(
        self, tx: WriteTx, d: Deployment, r: Rollout, evidence: Evidence, baselines: drift.Baselines
    ) -> bool:
        """Roll an A/B or shadow rollout, or a paused step or phase of another, back when a
        guard fails over its phase or step so far (see
        :func:`controlplane.rollouts.steps.judge_open`); nothing else moves it."""
        verdict = steps.judge_open(
            tx,
            d,
            r,
            self.guard_min_requests,
            lambda a: _scored(d, a, baselines),
            evidence.unloaded,
        )
        if verdict is None or verdict.failure is None:
            return False
        scope = f" over the {steps.scope(r)}"
        return self._roll_back(tx, d, r, verdict.failure, verdict.evidence, scope)

    def _roll_back(
        self,
        tx: WriteTx,
        d: Deployment,
        r: Rollout,
        failure: GuardResult,
        evidence: Evidence,
        scope: str,
    ) -> bool:
        why = f"guard failed{scope}: {failure.expression}"
        if failure.detail:
            why += f" ({failure.detail})"
        where = steps.scope(r)
        note = guards.why_in_force(failure.expression, d.guards, r.guards, r.phase, where)
        if note:
            why += f"; {note}"
        transition = machine.guard_rollback(r, tx.now, why)
        moved = transitions.apply(
            tx, d, transition, AUTOMATIC_ACTOR, evidence=evidence, strict=False
        )
        if moved is not None:
            log.warning("rollout rolled back", deployment=d.id, rollout=r.id, reason=why)
        return moved is not None


def _scored(d: Deployment, a: ArmSummary | None, baselines: drift.Baselines) -> ArmSummary | None:
    """``a`` with its drift's derived fields, when its version's baseline profile is known."""
    if a is None or a.drift is None:
        return a
    _, profile = baselines(a.version)
    if profile is None:
        return a
    return replace(a, drift=drift.score(a.drift, profile, d.drift_thresholds))


def _row(report: WindowReport, tx: WriteTx) -> WindowReportRow:
    return WindowReportRow(
        deployment_id=report.deployment_id,
        replica=report.replica,
        sequence=report.sequence,
        generation=report.generation,
        rollout_id=report.rollout_id,
        start_time=report.start_time,
        end_time=report.end_time,
        receive_time=tx.now,
        body={
            "arms": [to_json(a) for a in report.arms],
            "shadow": to_json(report.shadow),
            "unloaded_versions": [to_json(u) for u in report.unloaded],
            "queued_windows": report.queued_windows,
        },
    )
