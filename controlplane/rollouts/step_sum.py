"""The running sum of the window reports of a rollout's current step or phase.

A complete canary step or blue/green phase is judged over the sum of every report made in it
(:mod:`controlplane.rollouts.steps`), and judged again on every report while a guard cannot
be evaluated yet; an A/B or shadow phase (from the rollout's start, or its last resume) is
judged over its sum on every report, for a failure only. Re-reading and re-merging the step's
reports each time would cost more with every report the step holds, so the sum is kept with
the rollout (``rollouts.step_sum``). Merging is associative, so the kept sum equals the sum of
the reports it took in (within the bounds :mod:`controlplane.rollouts.merge` keeps: int64
counts, the most frequent labels).

A report belongs to the step when it was made under the rollout, received after the step
began, and made under the step's generation or later (or by a sidecar that does not say which
generation it applied). A step that moves on does so in the transaction of the report that
completed it, and the next step begins at that report's receive time: received *at* the
step's start, that report counted in the step before and does not count again. Reports and
the transitions of rollouts under way take their time again once they hold the deployment's
lock (:meth:`controlplane.store.WriteTx.restamp`), so a report received after a step began was
stored after it, and one stored before it began was received before.

The kept sum is tagged with its step (start time, in UTC, and generation) and remembers the
last report it took in (its id and receive time). On every report of the rollout, whatever its
strategy, in the report's transaction and under the deployment's row lock that every report
takes first, the sum takes in every report of the step stored after that one: normally the
report itself, and also any stored by a writer that does not keep the sum (a control plane of
an earlier version, during a rolling upgrade). So several control-plane workers sharing a
database agree on the sum, and each report is counted once, in one step. When the step moves
on, or the rollout resumes (or for a rollout that kept no sum yet), the tag is stale and the sum
starts again from the reports stored for the new step. A pause changes neither the step's start
nor its generation (:mod:`controlplane.rollouts.transitions`): the paused step's sum goes on,
taking in the reports of sidecars still at the generation the step began with. From then on
the sum keeps what it took in, so a step's evidence outlives the pruning of its reports
(``report_retention_seconds``).

A report whose histogram layout (latency or score buckets, or drift bins) differs from the
step's sum of it (a sidecar upgraded mid-step, once the replicas of the old layout have
stopped reporting) never fails because of the sum: that histogram of the sum restarts from the
report's, its counts before are dropped, the other counts are kept, and the sum says so
(``restarted``, shown with the guards that read values derived from it). Reports of different
layouts in one latest window are still refused (:mod:`controlplane.rollouts.merge`).

The champion's windows reported before the rollout began, its comparison when it has too few
requests in a step and no better reference (:mod:`controlplane.rollouts.steps`), are summed
once, the first time a step needs them, and kept with the rollout
(``rollouts.champion_before``): nothing received after the rollout began changes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog

from controlplane.domain.deployments import (
    ArmSummary,
    Deployment,
    DriftSummary,
    Histogram,
    Rollout,
    ShadowSummary,
    WindowReport,
)
from controlplane.rollouts.histograms import shown
from controlplane.rollouts.merge import drift_layout, merge_arms, merge_reports, merge_shadow
from controlplane.store import Tx, WriteTx
from controlplane.store import deployment_json as dj
from controlplane.store.convert import utc
from controlplane.store.deployment_json import to_json
from controlplane.store.deployment_repos import Deployments
from modelplane.errors import InvalidArgument

log = structlog.get_logger("modelplane.controlplane.rollouts")


@dataclass(frozen=True)
class StepSum:
    """The merged arms of a step's reports, the replicas that made them and the latest end."""

    champion: ArmSummary | None = None
    candidate: ArmSummary | None = None
    shadow: ShadowSummary | None = None
    replicas: frozenset[str] = frozenset()
    window_end_time: datetime | None = None
    #: The histograms that restarted (``candidate.latency``, ...) and why, for people.
    restarted: tuple[tuple[str, str], ...] = ()


def _versions(r: Rollout) -> dict[str, int]:
    return {"champion": r.champion_version, "candidate": r.candidate_version}


def _tag(phase_start_time: datetime, step_generation: int) -> dict[str, Any]:
    return {"phase_start_time": utc(phase_start_time).isoformat(), "generation": step_generation}


def _belongs(report: WindowReport, step_generation: int) -> bool:
    return report.generation == 0 or report.generation >= step_generation


def step_reports(
    tx: Tx, d: Deployment, r: Rollout, newer_than: tuple[int, datetime] | None = None
) -> list[WindowReport]:
    """The stored reports that belong to ``r``'s current step (see the module docstring);
    with ``newer_than`` (a report id and receive time), only those stored after that one."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    step_generation = row.step_generation if row is not None else 0
    reports = repo.recent_reports(d.id, r.id, r.phase_start_time, newer_than=newer_than)
    return [x for x in reports if _belongs(x, step_generation)]


def summed(reports: Sequence[WindowReport], r: Rollout) -> StepSum:
    """The sum of ``reports`` (each arm of ``r``'s versions only); a histogram whose layout
    changes between them restarts (see the module docstring)."""
    try:
        return _summed(reports, r)
    except InvalidArgument as exc:
        if exc.reason != "HISTOGRAM_LAYOUT_MISMATCH":
            raise
    total = StepSum()
    for report in reports:
        total = combined(total, _summed([report], r))
    return total


def _summed(reports: Sequence[WindowReport], r: Rollout) -> StepSum:
    champion, candidate, shadow = merge_reports(reports, _versions(r))
    ends = [x.end_time for x in reports if x.end_time is not None]
    return StepSum(
        champion=champion,
        candidate=candidate,
        shadow=shadow,
        replicas=frozenset(x.replica for x in reports),
        window_end_time=max(ends) if ends else None,
    )


def _differs(kept: object, added: object, what: str, notes: dict[str, str]) -> bool:
    """Whether ``added``'s layout differs from ``kept``'s (so ``kept`` restarts): noted."""
    if kept is None or added is None:
        return False
    if isinstance(kept, Histogram) and isinstance(added, Histogram):
        if kept.layout == added.layout:
            return False
        change = f"a report's buckets ({shown(added)}) differ from the step's ({shown(kept)})"
    elif isinstance(kept, DriftSummary) and isinstance(added, DriftSummary):
        if (kept.baseline_sha256, drift_layout(kept)) == (
            added.baseline_sha256,
            drift_layout(added),
        ):
            return False
        change = "a report's drift counts have other baselines, features or bins"
    else:
        return False
    notes[what] = (
        f"{what} restarted in this step: {change}; the step's {what} counts only the reports since"
    )
    log.warning("step histogram restarted", histogram=what, reason=notes[what])
    return True


def _fitted_arm(kept: ArmSummary | None, added: ArmSummary | None, notes: dict[str, str]) -> Any:
    """``kept`` less each histogram whose layout ``added``'s differs from."""
    if kept is None or added is None:
        return kept
    changes: dict[str, Any] = {
        field: None
        for field in ("latency", "scores", "drift")
        if _differs(getattr(kept, field), getattr(added, field), f"{kept.arm}.{field}", notes)
    }
    return replace(kept, **changes) if changes else kept


def _fitted_shadow(
    kept: ShadowSummary | None, added: ShadowSummary | None, notes: dict[str, str]
) -> Any:
    """``kept`` less each score or latency histogram whose layout ``added``'s differs from."""
    if kept is None or added is None:
        return kept
    changes: dict[str, Any] = {
        field: None
        for field in ("champion_scores", "shadow_scores", "latency")
        if _differs(getattr(kept, field), getattr(added, field), f"shadow.{field}", notes)
    }
    return replace(kept, **changes) if changes else kept


def fold_arms(items: Sequence[ArmSummary], arm: str) -> ArmSummary | None:
    """The sum of one arm's summaries in order, a histogram restarting where its layout
    changes (None for none)."""
    try:
        return merge_arms(items, arm)
    except InvalidArgument as exc:
        if exc.reason != "HISTOGRAM_LAYOUT_MISMATCH":
            raise
    total: ArmSummary | None = None
    for item in items:
        total = _both(_fitted_arm(total, item, {}), item, merge_arms, arm)
    return total


def _both(kept: Any, added: Any, merge: Any, *name: str) -> Any:
    parts = [x for x in (kept, added) if x is not None]
    return merge(parts, *name) if parts else None


def combined(a: StepSum, b: StepSum) -> StepSum:
    """The sum of two sums (``b`` the later): a histogram of ``a`` whose layout ``b``'s
    differs from restarts from ``b``'s."""
    ends = [x for x in (a.window_end_time, b.window_end_time) if x is not None]
    notes = dict(a.restarted)
    notes.update(b.restarted)
    champion = _fitted_arm(a.champion, b.champion, notes)
    candidate = _fitted_arm(a.candidate, b.candidate, notes)
    shadow = _fitted_shadow(a.shadow, b.shadow, notes)
    return StepSum(
        champion=_both(champion, b.champion, merge_arms, "champion"),
        candidate=_both(candidate, b.candidate, merge_arms, "candidate"),
        shadow=_both(shadow, b.shadow, merge_shadow),
        replicas=a.replicas | b.replicas,
        window_end_time=max(ends) if ends else None,
        restarted=tuple(sorted(notes.items())),
    )


def _to_json(tag: dict[str, Any], s: StepSum, last: tuple[int, datetime] | None) -> dict[str, Any]:
    return {
        "step": tag,
        "last_id": last[0] if last else 0,
        "last_receive_time": utc(last[1]).isoformat() if last else None,
        "champion": to_json(s.champion),
        "candidate": to_json(s.candidate),
        "shadow": to_json(s.shadow),
        "replicas": sorted(s.replicas),
        "window_end_time": utc(s.window_end_time).isoformat() if s.window_end_time else None,
        "restarted": dict(s.restarted),
    }


def _time(value: str | None) -> datetime | None:
    return utc(datetime.fromisoformat(value)) if value else None


def _from_json(d: dict[str, Any]) -> tuple[StepSum, tuple[int, datetime] | None]:
    last_time = _time(d.get("last_receive_time"))
    total = StepSum(
        champion=dj.arm(d.get("champion")),
        candidate=dj.arm(d.get("candidate")),
        shadow=dj.shadow(d.get("shadow")),
        replicas=frozenset(str(x) for x in d.get("replicas", [])),
        window_end_time=_time(d.get("window_end_time")),
        restarted=tuple(sorted((str(k), str(v)) for k, v in (d.get("restarted") or {}).items())),
    )
    return total, (int(d.get("last_id", 0)), last_time) if last_time else None


def _stored(
    kept: dict[str, Any] | None, tag: dict[str, Any]
) -> tuple[StepSum, tuple[int, datetime] | None] | None:
    return _from_json(kept) if kept and kept.get("step") == tag else None


def kept(tx: Tx, d: Deployment, r: Rollout) -> StepSum | None:
    """The sum kept for ``r``'s current step as it is stored (None when none is)."""
    row = Deployments(tx.session).rollout_row(d.id, r.id)
    if row is None:
        return None
    stored = _stored(row.step_sum, _tag(r.phase_start_time, row.step_generation))
    return stored[0] if stored else None


def current(tx: Tx, d: Deployment, r: Rollout) -> StepSum:
    """The sum of every report of ``r``'s current step stored so far: the kept sum with the
    step's reports stored since it was kept, kept again in a write transaction (``d``'s row
    locked first, see :func:`controlplane.services.deployments.require_deployment`)."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    if row is None:
        return summed(step_reports(tx, d, r), r)
    tag = _tag(r.phase_start_time, row.step_generation)
    total, last = _stored(row.step_sum, tag) or (StepSum(), None)
    new = step_reports(tx, d, r, newer_than=last)
    if not new and last is not None:
        return total
    total = combined(total, summed(new, r))
    stamps = [(x.id, x.receive_time) for x in new if x.receive_time is not None]
    if last is not None:
        stamps.append(last)
    if stamps:
        last = (max(i for i, _ in stamps), max(t for _, t in stamps))
    if isinstance(tx, WriteTx):
        repo.update_rollout(d.id, r.id, step_sum=_to_json(tag, total, last))
    return total


def take_in(tx: WriteTx, d: Deployment, r: Rollout) -> None:
    """Bring the kept sum of ``r``'s current step up to date with its stored reports (called
    on every report of ``r``, once the report is stored, whatever its strategy)."""
    current(tx, d, r)


def champion_before(tx: WriteTx, d: Deployment, r: Rollout) -> ArmSummary | None:
    """The sum of the champion's windows received before ``r`` began (those still stored when
    first asked for, then kept), whatever rollout a sidecar said they belonged to."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    if row is not None and "summary" in row.champion_before:
        return dj.arm(row.champion_before["summary"])
    arms = [
        a
        for x in repo.reports_before(d.id, r.start_time)
        for a in x.arms
        if a.arm == "champion" and a.version == r.champion_version
    ]
    total = fold_arms(arms, "champion")
    if row is not None:
        repo.update_rollout(d.id, r.id, champion_before={"summary": to_json(total)})
    return total
