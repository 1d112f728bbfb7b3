"""Judging a canary step or a phase of another strategy over every window reported since it
began.

Guards run on each merged window so that a bad candidate is rolled back at once, but one window
of one report interval holds few requests when traffic is modest, and a guard is skipped while
an arm it reads has fewer than ``guard_min_requests`` requests in the window. So a canary step
that has lasted its time and counted its requests advances (and the last step promotes), and a
blue/green phase that has lasted its time moves on (the shadow phase to the switch, the watch
phase to promotion), only on the verdict over the step or phase: the guards evaluated over the
sum of every report of the rollout made under its generation (or, from a sidecar that does not
say which generation it applied, received since it began), kept as a running sum
(:mod:`controlplane.rollouts.step_sum`). Only when every guard that applies was evaluated, each
arm it reads having at least ``guard_min_requests`` requests (for ``shadow``: compared or
failed requests) there, and passed, does it move; a guard that evaluates to false there rolls
the candidate back; a guard that cannot be evaluated yet (too few requests, too few labels
for ``accuracy`` or drift rows for a ``drift`` statistic, a value not reported, an error on
these values) holds it until more evidence arrives,
unless the phase's defaults judge in its place (when it judges the version under test and
erred: see :func:`controlplane.rollouts.guards.judge`). A guard reading what the step
or phase never has does not apply there and holds nothing: ``shadow`` in a canary step or the
blue/green watch, ``candidate`` in the blue/green shadow phase (the candidate answers only
copies), nor, in a step where the champion answers nothing and has no comparison (a single
100% step on a new deployment), ``champion``: there the absolute bound on the candidate's
error rate stands in (:data:`~controlplane.rollouts.guards.NO_CHAMPION_GUARD`). A step or
phase also needs at least one guard that applies, evaluated and passed, so it never moves on
time alone; there always is one, as the phase's defaults are in force wherever no guard that
was set judges the version under test (:mod:`controlplane.rollouts.guards`). Nothing moves,
either, while a replica says it cannot load the candidate
(:mod:`controlplane.rollouts.unloaded`): the guards that passed are then shown held, with the
replicas and their errors.

An A/B or shadow rollout never moves on its own (a person promotes it), but at low traffic its
windows are as thin, so a candidate (or shadow) failing every request would serve for ever. Its
phase, from the rollout's start or its last resume, is therefore judged the same way on every
report (:func:`judge_open`) once the version under test has answered or failed the rollout's
``min_requests`` requests there (for ``shadow``: copies compared or failed), each guard still
needing ``guard_min_requests`` requests of every arm it reads: a guard that evaluates to false
rolls the candidate back; guards that pass, or cannot be evaluated yet, change nothing. A paused
canary step or blue/green phase, which does not complete while paused, is judged the same way
(a pause keeps the step's sum), so that a failing candidate is rolled back while paused too.

The champion is compared with its own requests in the step when it has enough; otherwise (the
100% step, the blue/green watch, or a thin share) with its reference: the last window or step
in which it had enough, or else the sum of its windows reported before the rollout began.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from controlplane.domain.deployments import (
    AB,
    CANARY,
    SHADOW,
    SHADOW_PHASES,
    ArmSummary,
    Deployment,
    Evidence,
    GuardResult,
    Rollout,
    UnloadedCandidate,
)
from controlplane.rollouts import guards, step_sum, unloaded
from controlplane.store import WriteTx
from modelplane.errors import InvalidArgument

#: The strategies with no automatic end (a person promotes or rolls back): their phase is
#: judged as a whole on every report, and only a failure counts.
OPEN_ENDED = frozenset({AB, SHADOW})


def scope(r: Rollout) -> str:
    """What ``r`` is judged over, for people: ``step`` (canary) or ``phase`` (the others)."""
    return "step" if r.strategy == CANARY else "phase"


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
    #: The guard variables the step or phase never has.
    absent: frozenset[str] = guards.ABSENT_WITH_TRAFFIC
    #: Why histograms that guards read over the step restarted (see :mod:`.step_sum`).
    restarted: tuple[str, ...] = ()
    #: The guards that erred, the phase's defaults judging in their place, and why
    #: (see :func:`controlplane.rollouts.guards.judge`): they hold nothing.
    stood_in: frozenset[str] = frozenset()
    stood_in_note: str = ""

    def counts(self, g: GuardResult) -> bool:
        """Whether ``g`` must be evaluated and pass for the step to move: it applies, and no
        default took its place."""
        return _applies(g.expression, self.absent) and g.expression not in self.stood_in

    def waiting_for(self) -> list[GuardResult]:
        """The applicable guards that could not be evaluated (or are held) on the step."""
        return [g for g in self.evidence.guards if g.error and self.counts(g)]


def _applies(guard: str, absent: frozenset[str]) -> bool:
    return not (guards.arms_read(guard) & absent)


def judge_step(
    tx: WriteTx,
    d: Deployment,
    r: Rollout,
    min_requests: int,
    scored: Callable[[ArmSummary | None], ArmSummary | None],
    not_loaded: Sequence[UnloadedCandidate] = (),
) -> StepVerdict:
    """The verdict of ``r``'s effective guards on its current step or phase (``scored`` adds
    drift scores to a merged arm; ``not_loaded``: the replicas that cannot load the
    candidate now)."""
    return _verdict(tx, d, r, step_sum.current(tx, d, r), min_requests, scored, not_loaded)


def _tested(total: step_sum.StepSum, phase: str) -> int:
    """The requests the version under test in ``phase`` answered or failed in ``total``: the
    shadow's copies in a shadow phase, else the candidate's requests."""
    if phase in SHADOW_PHASES:
        return total.shadow.pairs + total.shadow.errors if total.shadow is not None else 0
    return total.candidate.requests if total.candidate is not None else 0


def judge_open(
    tx: WriteTx,
    d: Deployment,
    r: Rollout,
    min_requests: int,
    scored: Callable[[ArmSummary | None], ArmSummary | None],
    not_loaded: Sequence[UnloadedCandidate] = (),
) -> StepVerdict | None:
    """The verdict of ``r``'s effective guards on its A/B or shadow phase (or paused step or
    phase) so far, once the version under test has answered ``r.min_requests`` requests in it
    (None before): only a failure counts, as these have no automatic end (see the module
    docstring)."""
    total = step_sum.current(tx, d, r)
    if _tested(total, r.phase) < max(r.min_requests, min_requests):
        return None
    return _verdict(tx, d, r, total, min_requests, scored, not_loaded)


def _verdict(
    tx: WriteTx,
    d: Deployment,
    r: Rollout,
    total: step_sum.StepSum,
    min_requests: int,
    scored: Callable[[ArmSummary | None], ArmSummary | None],
    not_loaded: Sequence[UnloadedCandidate],
) -> StepVerdict:
    champion = total.champion
    evidence = guards.in_phase(
        Evidence(
            champion=champion,
            candidate=total.candidate,
            shadow=total.shadow,
            window_end_time=total.window_end_time or tx.now,
            replica_count=len(total.replicas),
            step_candidate_requests=r.step_candidate_requests,
            unloaded=tuple(not_loaded),
            scope=scope(r),
        ),
        r.phase,
    )
    evidence = replace(
        evidence, champion=scored(evidence.champion), candidate=scored(evidence.candidate)
    )
    enough = champion is not None and champion.requests >= min_requests
    reference: ArmSummary | None = evidence.champion if enough else None
    compare_with = None
    stand_in = ""
    if not enough:
        compare_with = r.champion_reference
        stand_in = "an earlier step's"
        if compare_with is None or compare_with.requests < min_requests:
            compare_with = scored(step_sum.champion_before(tx, d, r))
            stand_in = "the windows before the rollout's"
    values = guards.variables(evidence, None)
    if compare_with is not None and compare_with.requests >= min_requests:
        values["champion"] = guards.variables(Evidence(champion=compare_with))["champion"]
        answered = champion.requests if champion is not None else 0
        stand_in = (
            f"judged against {stand_in} champion ({compare_with.requests} requests): this "
            f"{scope(r)}'s champion answered {answered}, fewer than the {min_requests} a "
            "comparison needs, and its row shows them"
        )
    else:
        stand_in = ""
    thin = guards.champion_minimum(r.candidate_percent, min_requests)
    judged = guards.judge(
        r.effective_guards,
        values,
        r.phase,
        min_requests,
        thin,
        scope(r),
        d.drift_thresholds.min_rows,
    )
    results, restarted = _noted(judged.results, total.restarted)
    if stand_in:
        results = _stood_in_champion(results, stand_in)
    failure = guards.first_failure(results)
    missing = guards.absent_in(r.phase)
    if r.candidate_percent >= 100 and guards.no_champion(values, thin):
        # The champion answers nothing here and has no comparison: guards reading it never
        # apply in this step (NO_CHAMPION_GUARD is in force instead).
        missing = missing | {"champion"}
    verdict = StepVerdict(
        evidence, reference, failure, False, missing, restarted, judged.stood_in, judged.note
    )
    applicable = [g for g in results if verdict.counts(g)]
    # Never "every guard passed" with none evaluated (the defaults see that one applies).
    passed = failure is None and bool(applicable) and all(g.passed for g in applicable)
    if failure is None and not_loaded:
        held = unloaded.describe(tuple(not_loaded))
        results = tuple(
            replace(g, passed=False, error=held) if g.passed and verdict.counts(g) else g
            for g in results
        )
        passed = False
    return replace(verdict, evidence=replace(evidence, guards=results), passed=passed)


#: The guard fields derived from each histogram (or drift counts) of a step's sum.
_DERIVED = {
    "latency": ("latency_p50", "latency_p99", "latency_mean"),
    "drift": ("drift",),
    "champion_scores": ("ks_statistic",),
    "shadow_scores": ("ks_statistic",),
}


def _noted(
    results: Sequence[GuardResult], restarted: Sequence[tuple[str, str]]
) -> tuple[tuple[GuardResult, ...], tuple[str, ...]]:
    """``results`` with the reason a histogram of the step restarted added to the detail of
    each guard that reads a value derived from it, and those reasons."""
    if not restarted:
        return tuple(results), ()
    out = []
    used: dict[str, None] = {}
    for g in results:
        try:
            read = guards.fields_read(g.expression)
        except InvalidArgument:
            read = frozenset()
        notes = []
        for what, why in restarted:
            arm, _, histogram = what.partition(".")
            derived = [f"{arm}.{field}" for field in _DERIVED.get(histogram, ())]
            if any(f == x or f.startswith(x + ".") for f in read for x in derived):
                notes.append(why)
                used[why] = None
        out.append(g.noted(*notes) if notes else g)
    return tuple(out), tuple(used)


def _stood_in_champion(results: Sequence[GuardResult], note: str) -> tuple[GuardResult, ...]:
    """``results`` with ``note`` (which champion the guards compared with, in place of the
    step's own) added to the detail of each guard that reads the champion."""
    out = []
    for g in results:
        try:
            reads = "champion" in guards.arms_read(g.expression)
        except InvalidArgument:
            reads = False
        out.append(g.noted(note) if reads else g)
    return tuple(out)


def passed_reason(verdict: StepVerdict, d: Deployment, r: Rollout) -> str:
    """What passed over a step or phase that moves, for its transition's reason."""
    where = scope(r)
    results = verdict.evidence.guards
    applicable = [g for g in results if verdict.counts(g)]
    if len(applicable) == len(results):
        why = f"every guard passed over the {where}"
    else:
        others = []
        if any(not _applies(g.expression, verdict.absent) for g in results):
            absent = " or ".join(sorted(verdict.absent))
            others.append(f"read {absent}, which this {where} does not have")
        if verdict.stood_in:
            others.append("could not be evaluated, the defaults judging in their place")
        why = (
            f"every guard that applies passed over the {where} ({len(applicable)} of "
            f"{len(results)}; the others {', or '.join(others)})"
        )
    notes = {
        guards.why_in_force(g.expression, d.guards, r.guards, r.phase, where) for g in applicable
    }
    notes.add(verdict.stood_in_note)
    notes.discard("")
    return "; ".join([why, *sorted(notes), *verdict.restarted])


def describe(verdict: StepVerdict) -> str:
    """Why a complete step or phase is held, for logs."""
    held = "; ".join(f"{g.expression}: {g.error}" for g in verdict.waiting_for())
    return held or "no guard applies here"
