"""Guard rules: CEL expressions over the merged latest window, checked on every report (and,
before a canary step moves, over the whole step: see :mod:`controlplane.rollouts.steps`).

Variables (numbers are doubles, see :mod:`controlplane.policy`):

- ``champion`` and ``candidate``: ``version``, ``requests``, ``errors``, ``rows``,
  ``error_rate``, ``latency_p50``, ``latency_p99``, ``latency_mean`` (seconds), ``labeled``,
  ``correct``, ``accuracy``, and ``drift`` (``rows``, ``max_psi``, ``drifted_share``);
- ``shadow`` (during a shadow phase): ``version``, ``pairs``, ``disagreements``, ``errors``,
  ``dropped``, ``error_rate`` (failed shadow requests over failed plus answered rows),
  ``dropped_rate`` (copies dropped over copies made: answered, failed or dropped),
  ``disagreement_rate``, ``mean_abs_diff``, ``ks_statistic``, and the shadow's latency
  ``latency_p50``, ``latency_p99``, ``latency_mean`` (seconds per copy: its share, by rows, of
  the shadow's session call that answered it, as the shadow runs up to 64 queued copies in one
  call: the candidate's compute time for the copy's rows, at or below a served request's
  latency for a version as fast; its wait in the shadow queue, which rests under its CPU
  budget, is left out).

A value that is unknown (no labels → no ``accuracy``; no shadow outside a shadow phase) is
absent, and a guard reading an absent value is *skipped* for that window: recorded with an
``error`` saying why, never counted as failed. A guard is also skipped until every arm it
reads has at least ``min_requests`` requests (for ``shadow``, copies answered or failed:
``pairs + errors``, so that a shadow failing every request is judged too). One that cannot be
evaluated on the window (a division by a count that is 0) is *not evaluated*, with the error:
only a guard that evaluates to false fails, and a failed guard rolls the rollout back. On a
single window, a guard reading an arm's ``latency_p99`` also waits for
:data:`WINDOW_P99_REQUESTS` requests of that arm: over fewer, the p99 is the slowest request
or close to it, and one slow request (a pause of the machine) would roll a healthy candidate
back; the sum over a whole step judges it as before. A guard reading an arm's ``accuracy``
waits, on a window as over a step, until that arm has ``min_requests`` labeled predictions
(``labeled``) there as well: labels arrive for a few requests only, and over one label the
accuracy is 0 or 1, so a single wrong label would roll a healthy candidate back. Like the
request minimum, it is a skip: on a window it holds nothing, and over a step it holds the step
until enough labels arrive. A guard reading a statistic of an arm's ``drift`` (``max_psi``,
``drifted_share``; not ``drift.rows``) likewise waits, on a window as over a step, until that
arm has the deployment's drift ``min_rows`` drift rows there (200 unless the deployment sets
it): the drift events wait for as many, and over fewer rows the PSI of unchanged traffic reads
high (over 20 rows, above 2), so such a guard would roll a healthy candidate back on any window
of low traffic.

Defaults. The guards in force in a phase are the deployment's and the rollout's; when none of
them *judges* the version under test there (reads ``candidate`` where the candidate answers
traffic, ``shadow`` in a shadow phase, and nothing the phase never has), the phase's defaults
follow them (:func:`effective_guards`), so that guards meant for one phase (a deployment's
shadow guards, say) never leave another unguarded:

- phases where the candidate answers traffic (canary, A/B, blue/green switch and watch):
  :data:`DEFAULT_TRAFFIC_GUARDS`, i.e. the candidate's error rate at most one point above the
  champion's, and its p99 latency at most 1.5 times the champion's plus 5 ms;
- shadow phases: :data:`DEFAULT_SHADOW_GUARDS`, i.e. the shadow's error rate at most one
  point above the champion's, and at most 10% of the compared rows disagreeing.

A guard reading what a phase never has (``shadow`` where the candidate answers traffic,
``candidate`` in a shadow phase) does not apply there: it is skipped, on every window as over
a whole step, even when a report carries that arm (:func:`in_phase` drops it). When there is no
champion to compare with (no champion request in the window or step and no reference, as in a
canary whose only step is 100% on a new deployment), every guard reading ``champion`` is
skipped; so where the candidate answers traffic and no guard in force judges it without the
champion, :data:`NO_CHAMPION_GUARD` (its error rate at most 1%) is evaluated as well
(:func:`in_force`), and a candidate that fails is still rolled back.

Likewise, when a guard in force that judges the version under test could not be evaluated on
a window or step (an error, such as a division by a count that is 0 in a guard stored before
the check below; not a skip for a missing value or too few requests), the phase's defaults (as
they would be in force there) are evaluated as well (:func:`judge`), each result saying why:
what that guard was there to catch (a failing candidate, say) is still caught, and the guards
whose place they took hold no step. Guards that were evaluated still judge beside them.

A guard is checked when it is set (:func:`check_guards`): it may read only the fields above
(a misspelled one would never be present, so the guard would be skipped for ever while it
still kept the defaults from applying), and it must yield a bool: it is evaluated on sample
values with every field present (each number 1), and one that yields anything else, or cannot
be evaluated at all, is refused (it would hold a step for ever). It is evaluated again with
every number 0, as in a window where no request failed, and refused when it cannot be evaluated
there (``candidate.errors / champion.errors <= 2.0``: write ``candidate.errors <= 2.0 *
champion.errors``; ``0.0 / 0.0`` is an error, see :mod:`controlplane.policy`, not a number
that compares false). Each refusal is INVALID_ARGUMENT with reason ``INVALID_GUARD``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from controlplane.domain.deployments import (
    SHADOW_PHASES,
    ArmSummary,
    DriftThresholds,
    Evidence,
    GuardResult,
    ShadowSummary,
)
from controlplane.policy import CompiledRule, Outcome, RuleResult, compile_rules, evaluate_rules
from modelplane.errors import InvalidArgument

GUARD_VARIABLES = ("champion", "candidate", "shadow")
DEFAULT_TRAFFIC_GUARDS = (
    "candidate.error_rate <= champion.error_rate + 0.01",
    "candidate.latency_p99 <= 1.5 * champion.latency_p99 + 0.005",
)
DEFAULT_SHADOW_GUARDS = (
    "shadow.error_rate <= champion.error_rate + 0.01",
    "shadow.disagreement_rate <= 0.1",
)
#: Evaluated where the candidate answers traffic and there is no champion to compare with
#: (see the module docstring): the champion-relative default with the champion's rate at 0.
NO_CHAMPION_GUARD = "candidate.error_rate <= 0.01"
#: The variables a phase where the candidate answers traffic never has, and a shadow phase.
ABSENT_WITH_TRAFFIC = frozenset({"shadow"})
ABSENT_IN_SHADOW = frozenset({"candidate"})
MAX_GUARDS = 50
#: The fields of ``champion`` and ``candidate`` (see the module docstring), of their ``drift``,
#: and of ``shadow``.
ARM_FIELDS = (
    "version", "requests", "errors", "rows", "error_rate", "latency_p50", "latency_p99",
    "latency_mean", "labeled", "correct", "accuracy", "drift",
)  # fmt: skip
DRIFT_FIELDS = ("rows", "max_psi", "drifted_share")
SHADOW_FIELDS = (
    "version", "pairs", "disagreements", "errors", "dropped", "error_rate", "dropped_rate",
    "disagreement_rate", "mean_abs_diff", "ks_statistic", "latency_p50", "latency_p99",
    "latency_mean",
)  # fmt: skip
#: The drift rows an arm needs before a guard reading its drift statistics is evaluated, when
#: the caller gives no deployment's ``min_rows`` (the deployments' default).
DRIFT_MIN_ROWS = DriftThresholds().min_rows


def _sample(number: float) -> dict[str, Any]:
    """Guard variables with every field present (each number ``number``), to evaluate guards
    on."""
    arm: dict[str, Any] = {f: number for f in ARM_FIELDS}
    arm["drift"] = {f: number for f in DRIFT_FIELDS}
    shadow = {f: number for f in SHADOW_FIELDS}
    return {"champion": arm, "candidate": dict(arm), "shadow": shadow}


def _invalid(what: str, rule: CompiledRule, problem: str, **where: int) -> InvalidArgument:
    metadata = {"field": what, "rule_index": str(rule.index)}
    metadata.update({k: str(v) for k, v in where.items()})
    return InvalidArgument(
        f"{what}[{rule.index}] {rule.expression[:200]!r}: {problem}",
        reason="INVALID_GUARD",
        metadata=metadata,
    )


def _unknown_field(path: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """The first field of ``path`` that the guard variables do not have, with the fields
    there are (None when every field is known)."""
    known: tuple[str, ...] = SHADOW_FIELDS if path[0] == "shadow" else ARM_FIELDS
    for depth, name in enumerate(path[1:], start=1):
        if name not in known:
            return ".".join(path[: depth + 1]), known
        known = DRIFT_FIELDS if depth == 1 and name == "drift" else ()
    return None


def _check_rule(rule: CompiledRule, what: str) -> None:
    for ref in rule.refs:
        unknown = _unknown_field(ref.path)
        if unknown is None:
            continue
        text, known = unknown
        parent, _, name = text.rpartition(".")
        if not known:
            problem = f"{parent} is a number; it has no field {name!r}"
        else:
            problem = f"{parent} has no field {name!r}"
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                problem += f" (did you mean {parent}.{close[0]}?)"
            problem += f"; its fields are {', '.join(known)}"
        where = f" at line {ref.line}, column {ref.column}"
        raise _invalid(what, rule, problem + where, line=ref.line, column=ref.column)
    problems = (
        "{}; a guard must be a condition (true or false) on the fields, such as "
        "candidate.error_rate <= 0.01",
        "it cannot be evaluated when every field is 0, as in a window where no request failed "
        "({}); write a ratio as a product, such as candidate.errors <= 2.0 * champion.errors "
        "rather than candidate.errors / champion.errors <= 2.0",
    )
    for number, problem in zip((1.0, 0.0), problems, strict=True):
        (result,) = evaluate_rules([rule], _sample(number)).results
        if result.outcome is Outcome.ERROR:
            raise _invalid(what, rule, problem.format(result.message))


def unmeasurable_drift(
    guards: Sequence[str], arms: frozenset[str]
) -> list[tuple[int, str, list[str]]]:
    """The guards (index, expression, the arms of ``arms`` whose drift it reads) that can never
    be evaluated when ``arms`` never report drift (their versions have no baseline profile to
    measure it against): those that read such an arm's ``drift`` and err without it. One that
    guards the read (``!has(candidate.drift) || ...``) is not among them."""
    out = []
    for rule in _compiled(tuple(guards)):
        read = sorted(
            {
                ref.path[0]
                for ref in rule.refs
                if ref.path[0] in arms and ref.path[1:2] == ("drift",)
            }
        )
        if not read:
            continue
        values = _sample(1.0)
        for arm in read:
            values[arm].pop("drift", None)
        (result,) = evaluate_rules([rule], values).results
        if result.outcome is Outcome.ERROR:
            out.append((rule.index, rule.expression, read))
    return out


def check_guards(guards: Sequence[str], what: str = "guards") -> tuple[str, ...]:
    """Guards that compile against the guard variables, read only their fields and yield a
    bool (see the module docstring); INVALID_ARGUMENT (INVALID_GUARD)."""
    items = tuple(guards)
    if len(items) > MAX_GUARDS:
        raise InvalidArgument(
            f"at most {MAX_GUARDS} {what} are allowed, got {len(items)}", reason="INVALID_GUARD"
        )
    try:
        rules = compile_rules(list(items), variables=GUARD_VARIABLES)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"{what}: {exc.message}",
            reason="INVALID_GUARD",
            metadata={**exc.metadata, "field": what},
        ) from None
    for rule in rules:
        _check_rule(rule, what)
    return items


def absent_in(phase: str) -> frozenset[str]:
    """The guard variables ``phase`` never has."""
    return ABSENT_IN_SHADOW if phase in SHADOW_PHASES else ABSENT_WITH_TRAFFIC


def in_phase(evidence: Evidence, phase: str) -> Evidence:
    """``evidence`` without the arms ``phase`` never has (:func:`absent_in`), so that no guard
    judges them there: a shadow summary where the candidate answers traffic (copies compared by
    a replica that had not yet applied the blue/green switch), the candidate's requests in a
    shadow phase (requests that pinned its version with ``model_version``)."""
    absent = absent_in(phase)
    return replace(
        evidence,
        candidate=None if "candidate" in absent else evidence.candidate,
        shadow=None if "shadow" in absent else evidence.shadow,
    )


def subject(phase: str) -> str:
    """The variable of the version under test in ``phase``: ``shadow`` or ``candidate``."""
    return "shadow" if phase in SHADOW_PHASES else "candidate"


def defaults(phase: str) -> tuple[str, ...]:
    """The default guards of ``phase``."""
    return DEFAULT_SHADOW_GUARDS if phase in SHADOW_PHASES else DEFAULT_TRAFFIC_GUARDS


def _judged(own: Sequence[str], phase: str, without_champion: bool = False) -> bool:
    """Whether a guard of ``own`` judges the version under test in ``phase`` (reads its
    variable and nothing the phase never has; with ``without_champion``, nor ``champion``)."""
    never = absent_in(phase) | ({"champion"} if without_champion else set())
    try:
        return any(subject(phase) in read and not (read & never) for read in map(arms_read, own))
    except InvalidArgument:
        # Stored before a rule limit they now break: evaluate() holds the rollout, saying why.
        return True


def effective_guards(
    deployment_guards: Sequence[str], rollout_guards: Sequence[str], phase: str
) -> tuple[str, ...]:
    """The guards in force in ``phase``: the deployment's and the rollout's, followed by the
    phase's defaults when none of those judges the version under test there."""
    own = (*deployment_guards, *rollout_guards)
    if own and _judged(own, phase):
        return own
    return (*own, *(g for g in defaults(phase) if g not in own))


def defaults_added(
    deployment_guards: Sequence[str], rollout_guards: Sequence[str], phase: str
) -> bool:
    """Whether the defaults of ``phase`` are in force although guards were set, because none
    of those judges the version under test there."""
    own = (*deployment_guards, *rollout_guards)
    return bool(own) and not _judged(own, phase)


def champion_minimum(candidate_percent: float, min_requests: int) -> int:
    """The champion requests that make a comparison: where the candidate serves everything, a
    champion with fewer than ``min_requests`` (a few answered before every replica switched)
    is none; elsewhere only one with no request is."""
    return min_requests if candidate_percent >= 100 else 1


def no_champion(values: dict[str, Any], min_requests: int = 1) -> bool:
    """Whether the guard variables ``values`` have no champion to compare with: none, or one
    with fewer than ``min_requests`` requests (a few stragglers answered before every replica
    switched are no comparison, and guards reading it would be skipped for ever)."""
    champion = values.get("champion")
    return champion is None or champion.get("requests", 0) < max(min_requests, 1)


def in_force(
    effective: Sequence[str], values: dict[str, Any], phase: str, min_requests: int = 1
) -> tuple[str, ...]:
    """The guards to evaluate on ``values`` in ``phase``: ``effective``, and
    :data:`NO_CHAMPION_GUARD` where the candidate answers traffic, there is no champion to
    compare with (see :func:`no_champion`), and no guard of ``effective`` judges the candidate
    without the champion."""
    guards = tuple(effective)
    if phase in SHADOW_PHASES or not no_champion(values, min_requests):
        return guards
    if NO_CHAMPION_GUARD in guards or _judged(guards, phase, without_champion=True):
        return guards
    return (*guards, NO_CHAMPION_GUARD)


def why_in_force(
    guard: str,
    deployment_guards: Sequence[str],
    rollout_guards: Sequence[str],
    phase: str,
    scope: str,
) -> str:
    """Why ``guard``, one nobody set, is in force in ``phase`` (empty for one that was set, or
    for the defaults when no guard was set at all)."""
    if guard in (*deployment_guards, *rollout_guards):
        return ""
    if guard == NO_CHAMPION_GUARD:
        return (
            f"no champion to compare with in this {scope}, so the candidate's error rate is "
            "bounded at 1%"
        )
    if guard in defaults(phase) and defaults_added(deployment_guards, rollout_guards, phase):
        return (
            f"a default guard of the {phase} phase: none of the deployment's or rollout's guards "
            f"judges the {subject(phase)} there"
        )
    return ""


def _arm(a: ArmSummary) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": a.version,
        "requests": a.requests,
        "errors": a.errors,
        "rows": a.rows,
        "labeled": a.labeled,
        "correct": a.correct,
    }
    for key in ("error_rate", "latency_p50", "latency_p99", "accuracy"):
        value = getattr(a, key)
        if value is not None:
            out[key] = value
    if a.latency is not None and a.latency.total > 0:
        out["latency_mean"] = a.latency.sum / a.latency.total
    if a.drift is not None:
        drift: dict[str, Any] = {"rows": a.drift.rows}
        if a.drift.max_psi is not None:
            drift["max_psi"] = a.drift.max_psi
        if a.drift.drifted_share is not None:
            drift["drifted_share"] = a.drift.drifted_share
        out["drift"] = drift
    return out


def _shadow(s: ShadowSummary) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": s.version,
        "pairs": s.pairs,
        "disagreements": s.disagreements,
        "errors": s.errors,
        "dropped": s.dropped,
    }
    if s.pairs + s.errors > 0:
        out["error_rate"] = s.errors / (s.pairs + s.errors)
    for key in (
        "dropped_rate", "disagreement_rate", "mean_abs_diff", "ks_statistic", "latency_p50",
        "latency_p99",
    ):  # fmt: skip
        value = getattr(s, key)
        if value is not None:
            out[key] = value
    if s.latency is not None and s.latency.total > 0:
        out["latency_mean"] = s.latency.sum / s.latency.total
    return out


def variables(
    evidence: Evidence, champion_reference: ArmSummary | None = None, min_requests: int = 1
) -> dict[str, Any]:
    """The guard variables of a window; the champion falls back to ``champion_reference``
    when it had fewer than ``min_requests`` requests in the window (the candidate serving
    everything, or nearly)."""
    out: dict[str, Any] = {}
    champion = evidence.champion
    thin = champion is None or champion.requests < max(min_requests, 1)
    if thin and champion_reference is not None:
        champion = champion_reference
    if champion is not None:
        out["champion"] = _arm(champion)
    if evidence.candidate is not None:
        out["candidate"] = _arm(evidence.candidate)
    if evidence.shadow is not None:
        out["shadow"] = _shadow(evidence.shadow)
    return out


@functools.lru_cache(maxsize=256)
def _compiled(guards: tuple[str, ...]) -> list[CompiledRule]:
    return compile_rules(list(guards), variables=GUARD_VARIABLES)


def _volume(values: dict[str, Any], name: str) -> float:
    entry = values.get(name) or {}
    if name == "shadow":
        return float(entry.get("pairs", 0) + entry.get("errors", 0))
    return float(entry.get("requests", 0))


def arms_read(guard: str) -> frozenset[str]:
    """The variables (``champion``, ``candidate``, ``shadow``) that ``guard`` reads."""
    (rule,) = _compiled((guard,))
    return frozenset(ref.path[0] for ref in rule.refs)


def fields_read(guard: str) -> frozenset[str]:
    """The fields ``guard`` reads, dotted (``candidate.latency_p99``, ``shadow.pairs``)."""
    (rule,) = _compiled((guard,))
    return frozenset(ref.text for ref in rule.refs)


#: Requests an arm needs in one window before a guard reading its ``latency_p99`` is evaluated
#: there: with 100, the p99 is not simply the slowest request.
WINDOW_P99_REQUESTS = 100


def _needed(rule: CompiledRule, arm: str, min_requests: int, scope: str) -> int:
    if scope == "window" and _reads(rule, arm, "latency_p99"):
        return max(min_requests, WINDOW_P99_REQUESTS)
    return min_requests


def _reads(rule: CompiledRule, arm: str, field: str) -> bool:
    return any(ref.path[0] == arm and ref.path[1:2] == (field,) for ref in rule.refs)


def _unlabeled(rule: CompiledRule, values: dict[str, Any], min_requests: int) -> list[str]:
    """The arms whose ``accuracy`` ``rule`` reads that have some labeled predictions in
    ``values`` but fewer than ``min_requests``: over fewer, one wrong label moves the accuracy
    by more than the margin a guard allows (one label out of one is 0% or 100%). An arm with
    none has no ``accuracy``, and the rule is skipped for that value."""
    return [
        arm
        for arm in ("champion", "candidate")
        if arm in values
        and _reads(rule, arm, "accuracy")
        and 0 < values[arm].get("labeled", 0) < min_requests
    ]


def evaluate(
    guards: Sequence[str],
    values: dict[str, Any],
    min_requests: int,
    scope: str = "window",
    drift_min_rows: int = DRIFT_MIN_ROWS,
) -> tuple[GuardResult, ...]:
    """Each guard's result on the ``values`` of one window (or of the ``scope`` they were
    summed over, named in the reasons for skipping; ``drift_min_rows``: the deployment's drift
    ``min_rows``; see the module docstring)."""
    return _evaluate(guards, values, min_requests, scope, drift_min_rows)[0]


def _reads_drift(rule: CompiledRule, arm: str) -> bool:
    """Whether ``rule`` reads a statistic of ``arm``'s drift (any field but its ``rows``)."""
    return any(
        ref.path[0] == arm and ref.path[1:2] == ("drift",) and ref.path[2:3] != ("rows",)
        for ref in rule.refs
    )


def _few_drift_rows(rule: CompiledRule, values: dict[str, Any], min_rows: int) -> list[str]:
    """The arms whose drift statistics ``rule`` reads that have fewer than ``min_rows`` drift
    rows in ``values``: over fewer, the PSI of unchanged traffic reads high (see the module
    docstring). An arm with no drift has no statistic, and the rule is skipped for that
    value."""
    return [
        arm
        for arm in ("champion", "candidate")
        if arm in values
        and "drift" in values[arm]
        and _reads_drift(rule, arm)
        and values[arm]["drift"].get("rows", 0) < min_rows
    ]


def _evaluate(
    guards: Sequence[str],
    values: dict[str, Any],
    min_requests: int,
    scope: str,
    drift_min_rows: int = DRIFT_MIN_ROWS,
) -> tuple[tuple[GuardResult, ...], dict[int, str]]:
    """:func:`evaluate`'s results, and the message of each guard (by index) whose evaluation
    erred (skipped guards, and guards this server no longer accepts, are not among them)."""
    try:
        rules = _compiled(tuple(guards))
    except InvalidArgument as exc:
        # Stored before a rule limit it now breaks (guards are checked when a rollout starts):
        # hold the rollout, saying why, rather than refuse every report.
        why = (
            f"not evaluated: this server no longer accepts the guards ({exc.message}); abort "
            "the rollout and start it again with guards it accepts"
        )
        return tuple(GuardResult(g, False, why) for g in guards), {}
    ready: list[CompiledRule] = []
    skipped: dict[int, str] = {}
    for rule in rules:
        arms = sorted({ref.path[0] for ref in rule.refs})
        absent = [a for a in arms if a not in values]
        needed = {a: _needed(rule, a, min_requests, scope) for a in arms}
        thin = [a for a in arms if a in values and _volume(values, a) < needed[a]]
        unlabeled = _unlabeled(rule, values, min_requests)
        undrifted = _few_drift_rows(rule, values, drift_min_rows)
        if absent:
            skipped[rule.index] = f"skipped: no {', '.join(absent)} in this {scope}"
        elif thin:
            unit = "shadow requests" if thin == ["shadow"] else "requests"
            least = max(needed[a] for a in thin)
            skipped[rule.index] = (
                f"skipped: {', '.join(thin)} has fewer than {least} {unit} in this {scope}"
            )
        elif unlabeled:
            skipped[rule.index] = (
                f"skipped: {', '.join(unlabeled)} has fewer than {min_requests} labeled "
                f"predictions in this {scope}, too few to judge its accuracy"
            )
        elif undrifted:
            skipped[rule.index] = (
                f"skipped: {', '.join(undrifted)} has fewer than {drift_min_rows} drift rows in "
                f"this {scope} (the deployment's drift min_rows), too few to judge its drift"
            )
        else:
            ready.append(rule)
    decided = {r.index: r for r in evaluate_rules(ready, values).results}
    out = []
    erred: dict[int, str] = {}
    for rule in rules:
        if rule.index in skipped:
            out.append(GuardResult(rule.expression, False, skipped[rule.index]))
            continue
        result = decided[rule.index]
        if result.missing:
            error = f"skipped: no value for {', '.join(result.missing)} in this {scope}"
            out.append(GuardResult(rule.expression, False, error))
        elif result.outcome is Outcome.ERROR:
            out.append(GuardResult(rule.expression, False, f"not evaluated: {result.message}"))
            erred[rule.index] = result.message
        else:
            out.append(GuardResult(rule.expression, result.passed, detail=_detail(result)))
    return tuple(out), erred


def _detail(result: RuleResult) -> str:
    """What an evaluated guard read: ``passed with candidate.error_rate=0.0, ...``, or the
    message of one that evaluated to false (which names the values too)."""
    if not result.passed:
        return result.message
    shown = ", ".join(
        f"{k}={v!r}" for k, v in result.values.items() if not isinstance(v, list | dict)
    )
    return "passed" + (f" with {shown}" if shown else "")


@dataclass(frozen=True)
class Judged:
    """The guards' results on one window, step or phase (see :func:`judge`)."""

    results: tuple[GuardResult, ...]
    #: The guards in force whose place the phase's defaults took: they erred, and hold nothing.
    stood_in: frozenset[str] = frozenset()
    #: Why the defaults judge in their place ("" when they do not).
    note: str = ""


def judge(
    effective: Sequence[str],
    values: dict[str, Any],
    phase: str,
    min_requests: int,
    champion_requests: int = 1,
    scope: str = "window",
    drift_min_rows: int = DRIFT_MIN_ROWS,
) -> Judged:
    """The results of the guards in force on ``values`` in ``phase`` (:func:`in_force`, with
    ``champion_requests`` as its minimum), evaluated as :func:`evaluate` does (with the
    deployment's drift ``min_rows``, ``drift_min_rows``); and when one
    of them that judges the version under test erred (not skipped: it could not be evaluated
    on these values, such as a division by a count that is 0), the results of the phase's
    defaults that are not in force as well, standing in for the guards that erred (see the
    module docstring). A guard beside it that was evaluated does not make up for it: it may
    judge something else (latency where the one that erred judged errors)."""
    guards = in_force(effective, values, phase, champion_requests)
    results, erred = _evaluate(guards, values, min_requests, scope, drift_min_rows)
    judging = {i for i, g in enumerate(guards) if _judged((g,), phase)} & erred.keys()
    if not judging:
        return Judged(results)
    # The defaults as they would be in force on these values (NO_CHAMPION_GUARD included).
    extra = [
        g for g in in_force(defaults(phase), values, phase, champion_requests) if g not in guards
    ]
    # With the defaults in force already (set as guards), they judge: the guard that erred
    # holds nothing either way.
    note = (
        f"a guard that judges the {subject(phase)} could not be evaluated "
        f"({erred[min(judging)]}), so the {phase} phase's defaults judge it"
    )
    # In the error, which the evidence shows (the detail is only for reasons).
    instead = f"the {phase} phase's defaults judge the {subject(phase)} in its place"
    results = tuple(
        replace(g, error=f"{g.error}; {instead}") if i in judging else g
        for i, g in enumerate(results)
    )
    added = (g.noted(note) for g in evaluate(extra, values, min_requests, scope, drift_min_rows))
    stood_in = frozenset(guards[i] for i in judging)
    return Judged((*results, *added), stood_in, note)


def first_failure(results: Sequence[GuardResult]) -> GuardResult | None:
    """The first guard that evaluated to false, if any."""
    return next((r for r in results if r.failed), None)
