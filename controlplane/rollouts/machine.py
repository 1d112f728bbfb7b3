"""The rollout state machine: pure functions from a rollout (and the time) to its next state.

States: ``running`` → ``paused`` ⇄ ``running``; any active state → ``promoted`` (the candidate
becomes the champion), ``rolled_back`` or ``aborted`` (the champion serves everything). A
promotion also needs the gate of ``deployments/{d}`` to pass when a policy governs it (checked
where transitions are persisted, :mod:`controlplane.rollouts.transitions`); an automatic one
that it refuses pauses the rollout instead (:func:`gate_hold`).

Phases by strategy:

- shadow: ``shadow`` (candidate at 0%, answering copies of ``shadow_fraction`` of traffic)
  until promoted or rolled back;
- canary: ``canary`` with ``steps[step]`` percent; a step is complete once it has lasted
  ``step_duration`` *and* counted ``min_requests`` candidate requests reported at or after its
  start; a complete step advances (the last one promotes) only when the guards pass on the
  whole step (:mod:`controlplane.rollouts.steps`), so these transitions carry
  ``needs_verdict`` and are applied on window reports, never by the reconciler alone;
- ab: ``ab`` with ``split`` percent until promoted or rolled back;
- blue_green: ``shadow`` for at least ``step_duration``, then ``switch`` (all traffic to the
  candidate) for ``switch_seconds`` (the time sidecars need to apply it), then ``watch`` for at
  least ``step_duration``, then promoted. Leaving the shadow phase and promoting after the watch
  also need the guards to pass on the whole phase, so they carry ``needs_verdict`` like a canary
  step; only the switch moves on time alone.

Every transition but a pause restarts the phase clock, the step's request count and its
evidence; the caller persists it with a compare-and-set and bumps the deployment's generation.
A pause (a person's, or :func:`gate_hold`) changes no traffic, so the step or phase goes on
under it: its clock, its request count and the sum of its reports are kept, and reports made
under the generation it began with still count (``restarts=False``); resuming restarts the step
or phase, its evidence with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from controlplane.domain.deployments import (
    AB,
    ABORTED,
    BLUE_GREEN,
    CANARY,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    SHADOW,
    SWITCH,
    WATCH,
    Rollout,
    RolloutSpec,
)
from modelplane.errors import FailedPrecondition

AUTOMATIC_ACTOR = "modelplane"


@dataclass(frozen=True)
class Transition:
    """A rollout's next state, the action that led there, and the champion afterwards."""

    action: str
    rollout: Rollout
    champion_version: int
    reason: str
    #: True for a canary step's advance or promotion and a blue/green phase's end (shadow to
    #: switch, watch to promoted), which must first pass the guards on the whole step's or
    #: phase's evidence.
    needs_verdict: bool = False
    #: False for a pause: the step or phase goes on, its clock and evidence kept (see the
    #: module docstring).
    restarts: bool = True


def first_phase(spec: RolloutSpec) -> tuple[str, float]:
    """The phase a strategy starts in and the candidate's percent there."""
    if spec.strategy == CANARY:
        return CANARY, spec.steps[0]
    if spec.strategy == AB:
        return AB, spec.split
    return SHADOW, 0.0


def start(
    rollout_id: str,
    deployment_id: str,
    spec: RolloutSpec,
    champion_version: int,
    actor: str,
    reason: str,
    now: datetime,
) -> Rollout:
    """A new running rollout of ``spec``."""
    phase, percent = first_phase(spec)
    return Rollout(
        id=rollout_id,
        deployment_id=deployment_id,
        candidate_version=spec.candidate_version,
        champion_version=champion_version,
        strategy=spec.strategy,
        steps=spec.steps,
        split=spec.split,
        shadow_fraction=spec.shadow_fraction,
        step_duration_seconds=spec.step_duration_seconds,
        min_requests=spec.min_requests,
        guards=spec.guards,
        state=RUNNING,
        phase=phase,
        step=0,
        candidate_percent=percent,
        phase_start_time=now,
        start_time=now,
        end_time=None,
        started_by=actor,
        reason=reason,
        evidence=None,
        effective_guards=(),
    )


def _moved(r: Rollout, now: datetime, reason: str, **changes: object) -> Rollout:
    return replace(r, phase_start_time=now, step_candidate_requests=0, reason=reason, **changes)  # type: ignore[arg-type]


def _ended(r: Rollout, state: str, now: datetime, reason: str) -> Rollout:
    return _moved(r, now, reason, state=state, end_time=now, candidate_percent=0.0)


def due(r: Rollout, now: datetime, switch_seconds: float) -> Transition | None:
    """The time-driven transition that is due now, if any (only running rollouts move)."""
    if r.state != RUNNING:
        return None
    elapsed = (now - r.phase_start_time).total_seconds()
    if r.strategy == CANARY and r.phase == CANARY:
        if elapsed < r.step_duration_seconds or r.step_candidate_requests < r.min_requests:
            return None
        done = (
            f"step {r.step + 1} of {len(r.steps)} ({r.candidate_percent:g}%) lasted "
            f"{elapsed:.1f}s with {r.step_candidate_requests} candidate requests"
        )
        if r.step + 1 < len(r.steps):
            nxt = _moved(r, now, done, step=r.step + 1, candidate_percent=r.steps[r.step + 1])
            return Transition("advanced", nxt, r.champion_version, done, needs_verdict=True)
        ended = _ended(r, PROMOTED, now, done)
        return Transition("promoted", ended, r.candidate_version, done, needs_verdict=True)
    if r.strategy == BLUE_GREEN:
        if r.phase == SHADOW and elapsed >= r.step_duration_seconds:
            why = f"shadow phase lasted {elapsed:.1f}s; all traffic switches to the candidate"
            nxt = _moved(r, now, why, phase=SWITCH, candidate_percent=100.0)
            return Transition("advanced", nxt, r.champion_version, why, needs_verdict=True)
        if r.phase == SWITCH and elapsed >= switch_seconds:
            why = "switch applied; watching the candidate serve all traffic"
            nxt = _moved(r, now, why, phase=WATCH)
            return Transition("advanced", nxt, r.champion_version, why)
        if r.phase == WATCH and elapsed >= r.step_duration_seconds:
            why = f"watch phase lasted {elapsed:.1f}s"
            ended = _ended(r, PROMOTED, now, why)
            return Transition("promoted", ended, r.candidate_version, why, needs_verdict=True)
    return None


def _require(r: Rollout | None, states: tuple[str, ...], action: str, name: str) -> Rollout:
    if r is None:
        raise FailedPrecondition(
            f"{name} has no rollout to {action}; start one first", reason="NO_ROLLOUT"
        )
    if r.state not in states:
        raise FailedPrecondition(
            f"cannot {action} rollout {r.id} of {name}: it is {r.state.replace('_', ' ')} "
            f"(only a rollout that is {' or '.join(states)} can be)",
            reason="ROLLOUT_NOT_RUNNING" if RUNNING in states else "ROLLOUT_NOT_PAUSED",
            metadata={"rollout": r.id, "state": r.state},
        )
    return r


def manual(r: Rollout | None, action: str, now: datetime, reason: str, name: str) -> Transition:
    """A person's transition: ``pause``, ``resume``, ``abort``, ``promote`` or ``rollback``.

    FAILED_PRECONDITION when the rollout is not in a state the action applies to.
    """
    if action == "pause":
        cur = _require(r, (RUNNING,), action, name)
        return _paused(cur, reason)
    if action == "resume":
        cur = _require(r, (PAUSED,), action, name)
        return Transition(
            "resumed", _moved(cur, now, reason, state=RUNNING), cur.champion_version, reason
        )
    cur = _require(r, (RUNNING, PAUSED), action, name)
    if action == "promote":
        return Transition(
            "promoted", _ended(cur, PROMOTED, now, reason), cur.candidate_version, reason
        )
    if action == "rollback":
        return Transition(
            "rolled_back", _ended(cur, ROLLED_BACK, now, reason), cur.champion_version, reason
        )
    assert action == "abort", action
    return Transition("aborted", _ended(cur, ABORTED, now, reason), cur.champion_version, reason)


def gate_hold(r: Rollout, reason: str) -> Transition:
    """The automatic pause in place of a promotion the gate no longer allows: the candidate
    keeps its share until a person resumes (once the gate passes again), promotes or rolls
    back."""
    return _paused(r, reason)


def _paused(r: Rollout, reason: str) -> Transition:
    """``r`` held where it is: the phase clock keeps its start and the step its evidence;
    resuming restarts both."""
    held = replace(r, state=PAUSED, reason=reason)
    return Transition("paused", held, r.champion_version, reason, restarts=False)


def guard_rollback(r: Rollout, now: datetime, reason: str) -> Transition:
    """The automatic rollback after a failed guard."""
    return Transition(
        "rolled_back", _ended(r, ROLLED_BACK, now, reason), r.champion_version, reason
    )
