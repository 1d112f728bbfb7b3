"""Judging a canary step over every window reported since it began.

Guards run on each merged window so that a bad candidate is rolled back at once, but one
window of one report interval holds few requests when traffic is modest, and a guard is
skipped while an arm it reads has fewer than ``guard_min_requests`` requests in the window.
So a step that has lasted its time and counted its requests advances (and the last step
promotes) only on the step's own verdict: the guards evaluated over the sum of every report
of the rollout made under the step's generation (or, from a sidecar that does not say which
generation it applied, received since the step began) that is still stored. Only when every
guard was evaluated, each arm it reads having at least ``guard_min_requests`` requests in the
step, and passed, does the step move; a guard that evaluates to false on the step rolls the
candidate back; a guard that cannot be evaluated yet (too few requests, a value such as
``accuracy`` not reported) holds the step until more evidence arrives. A guard reading
``shadow`` does not apply to a canary step (there is no shadow) and holds nothing.

The champion is compared with its own requests in the step when it has enough; otherwise (the
100% step, or a thin share) with its reference: the last window or step in which it had
enough, or else the sum of its windows reported before the rollout began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from controlplane.domain.deployments import (
    ArmSummary,
    Deployment,
    Evidence,
    GuardResult,
    Rollout,
    WindowReport,
)
from controlplane.rollouts import guards
from controlplane.rollouts.merge import merge_arms, merge_reports
from controlplane.store import WriteTx
from controlplane.store.deployment_repos import Deployments

#: Bounds the query for the champion's windows before a rollout (old reports are pruned).
_LONG_AGO = timedelta(days=3650)
#: Variables a canary step never has, so guards reading them hold nothing there.
ABSENT_IN_CANARY = frozenset({"shadow"})


@dataclass(frozen=True)
class StepVerdict:
    """The guards' verdict on a whole step.

    ``evidence`` is the step's merged evidence with each guard's result; ``reference`` the
    champion summary worth keeping as the comparison for later steps (None to keep the
    stored one); ``failure`` the first guard that evaluated to false; ``passed`` is True when
    the step may move (every applicable guard evaluated and passed).
    """

    evidence: Evidence
    reference: ArmSummary | None
    failure: GuardResult | None
    passed: bool

    def waiting_for(self) -> list[GuardResult]:
        """The applicable guards that could not be evaluated on the step."""
        return [g for g in self.evidence.guards if g.error and _applies(g.expression)]


def _applies(guard: str) -> bool:
    return not (guards.arms_read(guard) & ABSENT_IN_CANARY)


def step_reports(tx: WriteTx, d: Deployment, r: Rollout) -> list[WindowReport]:
    """The stored reports that belong to ``r``'s current step (see the module docstring)."""
    repo = Deployments(tx.session)
    row = repo.rollout_row(d.id, r.id)
    step_generation = row.step_generation if row is not None else 0
    reports = repo.recent_reports(d.id, r.id, r.phase_start_time)
    return [x for x in reports if x.generation == 0 or x.generation >= step_generation]


def _champion_before(tx: WriteTx, d: Deployment, r: Rollout) -> ArmSummary | None:
    """The champion's summed windows reported before the rollout (those still stored)."""
    reports = Deployments(tx.session).recent_reports(d.id, "", r.start_time - _LONG_AGO)
    arms = [
        a
        for x in reports
        for a in x.arms
        if a.arm == "champion" and a.version == r.champion_version
    ]
    return merge_arms(arms, "champion")


def judge_step(
    tx: WriteTx,
    d: Deployment,
    r: Rollout,
    min_requests: int,
    scored: Callable[[ArmSummary | None], ArmSummary | None],
) -> StepVerdict:
    """The verdict of ``r``'s effective guards on its current step (``scored`` adds drift
    scores to a merged arm)."""
    reports = step_reports(tx, d, r)
    versions = {"champion": r.champion_version, "candidate": r.candidate_version}
    champion, candidate, _ = merge_reports(reports, versions)
    ends = [x.end_time for x in reports if x.end_time is not None]
    evidence = Evidence(
        champion=scored(champion),
        candidate=scored(candidate),
        window_end_time=max(ends) if ends else tx.now,
        replica_count=len({x.replica for x in reports}),
        step_candidate_requests=r.step_candidate_requests,
    )
    enough = champion is not None and champion.requests >= min_requests
    reference: ArmSummary | None = evidence.champion if enough else None
    compare_with = None
    if not enough:
        compare_with = r.champion_reference
        if compare_with is None or compare_with.requests < min_requests:
            compare_with = scored(_champion_before(tx, d, r))
    values = guards.variables(evidence, None)
    if compare_with is not None and compare_with.requests >= min_requests:
        values["champion"] = guards.variables(Evidence(champion=compare_with))["champion"]
    results = guards.evaluate(r.effective_guards, values, min_requests, scope="step")
    evidence = replace(evidence, guards=results)
    failure = guards.first_failure(results)
    passed = failure is None and all(g.passed for g in results if _applies(g.expression))
    return StepVerdict(evidence, reference, failure, passed)


def describe(verdict: StepVerdict) -> str:
    """Why a complete step is held, for logs."""
    return "; ".join(f"{g.expression}: {g.error}" for g in verdict.waiting_for())
