"""Drift judged over windows of at least ``min_rows`` rows, and the drift event it raises.

A report carries one replica's drift counts of one report interval (a couple of seconds), so
at low traffic no single report, nor the newest report of every replica together, holds the
deployment's ``min_rows``. Each arm therefore has an open drift window (``drift_windows``):
every accepted report adds its counts of an arm serving the version the deployment wants
there (the champion's, and the candidate's during a rollout) and counted against that
version's baseline. Once the window holds ``min_rows`` rows it is judged
(:func:`controlplane.rollouts.drift.crossed`) and closed, and the next report opens a new
one: tumbling windows of at least ``min_rows`` rows, summed across replicas and however long
they take to fill. A window starts again when its arm's version, baseline or the rollout in
progress changes (a promotion, a rollback, a new rollout), and a deployment without
thresholds keeps no windows. At high traffic one report already holds ``min_rows`` rows and
is judged alone.

A judged window that crosses the thresholds records a ``drift`` event unless one was recorded
within the cooldown (a window judged within it is closed all the same); the event (and the
retraining hooks' payload) names each crossing arm's window: its span, rows and per-feature
PSI, and the event's evidence carries the judged counts in place of the latest window's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from controlplane.domain.deployments import (
    ArmSummary,
    Deployment,
    DriftSummary,
    Evidence,
    WindowReport,
)
from controlplane.rollouts import drift, transitions
from controlplane.rollouts.machine import AUTOMATIC_ACTOR
from controlplane.rollouts.merge import drift_layout, merge_drift
from controlplane.store import WriteTx, convert
from controlplane.store import deployment_json as dj
from controlplane.store.deployment_json import to_json
from controlplane.store.deployment_repos import Deployments
from controlplane.store.deployment_tables import DriftWindowRow
from modelplane.profiles import BaselineProfile

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Judged:
    """A closed drift window that crossed the thresholds."""

    arm: str
    version: int
    summary: DriftSummary
    profile: BaselineProfile
    reasons: list[str]
    start: datetime | None
    end: datetime | None


def _wanted(d: Deployment) -> dict[str, int]:
    """The version the deployment wants each arm to serve."""
    r = d.active_rollout
    if r is None:
        return {"champion": d.champion_version}
    return {"champion": r.champion_version, "candidate": r.candidate_version}


def _widened(
    row: DriftWindowRow, start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The span of ``row``'s window and a report from ``start`` to ``end``."""
    starts = [t for t in (row.start_time and convert.utc(row.start_time), start) if t]
    ends = [t for t in (row.end_time and convert.utc(row.end_time), end) if t]
    return (min(starts) if starts else None, max(ends) if ends else None)


def take_in(
    tx: WriteTx, d: Deployment, report: WindowReport, baselines: drift.Baselines
) -> list[Judged]:
    """Add ``report``'s drift counts to the open windows of its arms; judge and close each
    window that reached ``min_rows``; return those that crossed the thresholds."""
    repo = Deployments(tx.session)
    t = d.drift_thresholds
    if not t.enabled:
        # None are open: removing the thresholds closed them (DeploymentService.update).
        return []
    wanted = _wanted(d)
    rollout = d.active_rollout.id if d.active_rollout is not None else ""
    judged: list[Judged] = []
    for a in report.arms:
        if a.drift is None or wanted.get(a.arm) != a.version:
            continue
        sha, profile = baselines(a.version)
        if profile is None:
            continue
        # check_report stored the digest bare, and the layout check matched it to ``sha``.
        counts = a.drift
        row = repo.drift_window(d.id, a.arm)
        start, end, reports = report.start_time, report.end_time, 1
        if (
            row is not None
            and (row.version, row.baseline_sha256, row.rollout_id) == (a.version, sha, rollout)
            and (before := dj.drift(row.body)) is not None
            and drift_layout(before) == drift_layout(counts)
        ):
            merged = merge_drift([before, counts], f"{a.arm}.drift")
            assert merged is not None
            counts = merged
            start, end = _widened(row, start, end)
            reports += row.reports
        if counts.rows < t.min_rows:
            repo.save_drift_window(
                DriftWindowRow(
                    deployment_id=d.id,
                    arm=a.arm,
                    version=a.version,
                    rollout_id=rollout,
                    baseline_sha256=sha,
                    rows=counts.rows,
                    start_time=start,
                    end_time=end,
                    reports=reports,
                    body=to_json(counts),
                )
            )
            continue
        repo.close_drift_windows(d.id, [a.arm])
        scored = drift.score(counts, profile, t)
        reasons = drift.crossed(scored, t)
        log.debug(
            "drift window judged",
            deployment=d.id,
            arm=a.arm,
            version=a.version,
            rows=scored.rows,
            reports=reports,
            max_psi=scored.max_psi,
            crossed=reasons,
        )
        if reasons:
            judged.append(Judged(a.arm, a.version, scored, profile, reasons, start, end))
    return judged


def respond(
    tx: WriteTx, d: Deployment, judged: list[Judged], evidence: Evidence
) -> list[tuple[str, str, dict[str, Any]]]:
    """Record a drift event for the ``judged`` windows unless the deployment is within its
    cooldown; the hook calls to make after commit."""
    if not judged:
        return []
    t = d.drift_thresholds
    repo = Deployments(tx.session)
    if not repo.claim_drift(d.id, tx.now, tx.now - timedelta(seconds=t.cooldown_seconds)):
        return []
    arms = []
    for j in judged:
        part: dict[str, Any] = {
            "arm": j.arm,
            "version": j.version,
            "window_start_time": _iso(j.start),
            "window_end_time": _iso(j.end),
        }
        part.update(drift.drift_report(j.summary, j.profile, j.reasons, t))
        arms.append(part)
    starts = [j.start for j in judged if j.start is not None]
    ends = [j.end for j in judged if j.end is not None]
    event = {
        "event": "drift",
        "deployment": d.name,
        "model": d.model_name,
        # The rollout the judged windows were counted under (the one in progress).
        "rollout_id": d.active_rollout.id if d.active_rollout is not None else "",
        "time": tx.now.isoformat(),
        "window_start_time": _iso(min(starts) if starts else None),
        "window_end_time": _iso(max(ends) if ends else evidence.window_end_time),
        "thresholds": {
            "max_psi": t.max_psi,
            "max_drifted_share": t.max_drifted_share,
            "min_rows": t.min_rows,
            "cooldown_seconds": t.cooldown_seconds,
        },
        "arms": arms,
    }
    why = "drift crossed the thresholds: " + "; ".join(
        f"{j.arm} v{j.version} {', '.join(j.reasons)}" for j in judged
    )
    transitions.record_event(
        tx,
        d,
        d.active_rollout,
        "drift",
        why,
        AUTOMATIC_ACTOR,
        _judged(evidence, judged),
        None,
        event,
    )
    log.warning("drift detected", deployment=d.id, reason=why)
    return [(d.id, d.webhook_url, event)]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _judged(evidence: Evidence, judged: list[Judged]) -> Evidence:
    """``evidence`` whose arms carry the judged windows' counts (and the judged rows) and
    whose end is theirs: what the event's reason and payload describe, rather than the latest
    report's window (``replica_count`` still counts the replicas of that latest window)."""
    arms = {"champion": evidence.champion, "candidate": evidence.candidate}
    for j in judged:
        a = arms.get(j.arm)
        if a is not None and a.version == j.version:
            arms[j.arm] = replace(a, drift=j.summary)
        else:
            arms[j.arm] = ArmSummary(arm=j.arm, version=j.version, drift=j.summary)
    ends = [j.end for j in judged if j.end is not None]
    return replace(
        evidence,
        champion=arms["champion"],
        candidate=arms["candidate"],
        window_end_time=max(ends) if ends else evidence.window_end_time,
    )
