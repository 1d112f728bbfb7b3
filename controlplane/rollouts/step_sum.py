"""The running sum of the window reports of a rollout's current step or phase.

A complete canary step or blue/green phase is judged over the sum of every report made in it
(:mod:`controlplane.rollouts.steps`), and judged again on every report while a guard cannot
be evaluated yet. Re-reading and re-merging the step's reports each time would cost more with
every report the step holds, so the sum is kept with the rollout (``rollouts.step_sum``) and
each accepted report of the step is added to it, in the report's own transaction. Merging is
associative, so the kept sum equals the sum of the reports it took in. It is kept in the
database, under the deployment's row lock that every report takes first, so that several
control-plane workers add each report exactly once and agree on the sum.

A report belongs to the step when it was made under the rollout, received since the step
began, and made under the step's generation or later (or by a sidecar that does not say which
generation it applied). The kept sum is tagged with its step (start time and generation);
when the step moves on, or for a rollout whose sum was never kept, the first report after
finds the tag stale and starts the sum from the reports stored for the step. From then on the
sum keeps what it took in, so a step's evidence outlives the pruning of its reports
(``report_retention_seconds``).

The champion's windows reported before the rollout began, its comparison when it has too
few requests in a step and no better reference (:mod:`controlplane.rollouts.steps`), are
summed once, the first time a step needs them, and kept with the rollout
(``rollouts.champion_before``): they do not change while the rollout runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controlplane.domain.deployments import (
    ArmSummary,
    Deployment,
    Rollout,
    ShadowSummary,
    WindowReport,
)
from controlplane.rollouts.merge import merge_arms, merge_reports, merge_shadow
from controlplane.store import Tx, WriteTx
from controlplane.store import deployment_json as dj
from controlplane.store.convert import utc
from controlplane.store.deployment_json import to_json
from controlplane.store.deployment_repos import Deployments

#: Bounds the query for the champion's windows before a rollout (old reports are pruned).
_LONG_AGO = timedelta(days=3650)


@dataclass(frozen=True)
class StepSum:
    """The merged arms of a step's reports, the replicas that made them and the latest end."""

    champion: ArmSummary | None = None
    candidate: ArmSummary | None = None
    shadow: ShadowSummary | None = None
    replicas: frozenset[str] = frozenset()
    window_end_time: datetime | None = None


def _versions(r: Rollout) -> dict[str, int]:
    return {"champion": r.champion_version, "candidate": r.candidate_version}


def _tag(phase_start_time: datetime, step_generation: int) -> dict[str, Any]:
    return {"phase_start_time": utc(phase_start_time).isoformat(), "generation": step_generation}


def _belongs(report: WindowReport, step_generation: int) -> bool:
    return report.generation == 0 or report.generation >= step_generation


def step_reports(tx: Tx, d: Deployment, r: Rollout) -> list[WindowReport]:
    """The stored reports that belong to ``r``'s current step (see the module docstring)."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    step_generation = row.step_generation if row is not None else 0
    reports = repo.recent_reports(d.id, r.id, r.phase_start_time)
    return [x for x in reports if _belongs(x, step_generation)]


def summed(reports: Sequence[WindowReport], r: Rollout) -> StepSum:
    """The sum of ``reports`` (each arm of ``r``'s versions only)."""
    champion, candidate, shadow = merge_reports(reports, _versions(r))
    ends = [x.end_time for x in reports if x.end_time is not None]
    return StepSum(
        champion=champion,
        candidate=candidate,
        shadow=shadow,
        replicas=frozenset(x.replica for x in reports),
        window_end_time=max(ends) if ends else None,
    )


def _both(kept: Any, added: Any, merge: Any, *name: str) -> Any:
    parts = [x for x in (kept, added) if x is not None]
    return merge(parts, *name) if parts else None


def plus(total: StepSum, report: WindowReport, r: Rollout) -> StepSum:
    """``total`` with ``report`` added."""
    one = summed([report], r)
    ends = [x for x in (total.window_end_time, one.window_end_time) if x is not None]
    return StepSum(
        champion=_both(total.champion, one.champion, merge_arms, "champion"),
        candidate=_both(total.candidate, one.candidate, merge_arms, "candidate"),
        shadow=_both(total.shadow, one.shadow, merge_shadow),
        replicas=total.replicas | one.replicas,
        window_end_time=max(ends) if ends else None,
    )


def _to_json(tag: dict[str, Any], s: StepSum) -> dict[str, Any]:
    return {
        "step": tag,
        "champion": to_json(s.champion),
        "candidate": to_json(s.candidate),
        "shadow": to_json(s.shadow),
        "replicas": sorted(s.replicas),
        "window_end_time": utc(s.window_end_time).isoformat() if s.window_end_time else None,
    }


def _from_json(d: dict[str, Any]) -> StepSum:
    end = d.get("window_end_time")
    return StepSum(
        champion=dj.arm(d.get("champion")),
        candidate=dj.arm(d.get("candidate")),
        shadow=dj.shadow(d.get("shadow")),
        replicas=frozenset(str(x) for x in d.get("replicas", [])),
        window_end_time=utc(datetime.fromisoformat(end)) if end else None,
    )


def add(tx: WriteTx, d: Deployment, r: Rollout, report: WindowReport) -> None:
    """Add ``report`` (just stored, of rollout ``r``) to the kept sum of ``r``'s current step;
    ``d``'s row must be locked (see :func:`controlplane.services.deployments.require_deployment`).
    """
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    if row is None:
        return
    tag = _tag(r.phase_start_time, row.step_generation)
    kept = row.step_sum or {}
    if kept.get("step") != tag:
        total = summed(step_reports(tx, d, r), r)  # the stored reports include ``report``
    elif tx.now >= r.phase_start_time and _belongs(report, row.step_generation):
        total = plus(_from_json(kept), report, r)
    else:
        return
    repo.set_step_sum(d.id, r.id, _to_json(tag, total))


def champion_before(tx: WriteTx, d: Deployment, r: Rollout) -> ArmSummary | None:
    """The sum of the champion's windows reported before ``r`` began (those still stored when
    first asked for, then kept)."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    if row is not None and "summary" in row.champion_before:
        return dj.arm(row.champion_before["summary"])
    reports = repo.recent_reports(d.id, "", r.start_time - _LONG_AGO)
    arms = [
        a
        for x in reports
        for a in x.arms
        if a.arm == "champion" and a.version == r.champion_version
    ]
    total = merge_arms(arms, "champion")
    if row is not None:
        repo.set_champion_before(d.id, r.id, {"summary": to_json(total)})
    return total


def current(tx: Tx, d: Deployment, r: Rollout) -> StepSum:
    """The sum of every report of ``r``'s current step: the kept sum when it is the step's,
    else the sum of the step's stored reports."""
    row = Deployments(tx.session).rollout_row(d.id, r.id)
    kept = row.step_sum if row is not None else {}
    if row is not None and kept.get("step") == _tag(r.phase_start_time, row.step_generation):
        return _from_json(kept)
    return summed(step_reports(tx, d, r), r)
