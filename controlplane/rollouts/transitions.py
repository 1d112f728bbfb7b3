"""Persisting a rollout transition inside a write transaction.

One transition = a compare-and-set of the deployment row on its revision (which also bumps
the generation and may move the champion), the rollout row's new state, a rollout event with
the evidence, an audit record under ``deployments/{deployment}``, and a change notification
published at commit. When the compare-and-set misses, another request or replica moved the
deployment first and nothing is written.

A promotion makes the candidate champion only while the gate of ``deployments/{deployment}``
passes for it (:func:`controlplane.services.gates.require_gate_passed`: the latest decision
passed, on the evidence as it is now), since approvals may have been withdrawn or the policy
tightened after the rollout started. A person's promotion is refused with the gate's error; an
automatic one pauses the rollout instead, with the gate's reason as the event's reason; a
paused rollout does not move on its own, so this happens once until a person resumes it.

A transition restarts the rollout's step or phase (its sum of reports begins again, under the
deployment's new generation), except a pause, which changes no traffic: the step goes on under
the generation it began with (:mod:`controlplane.rollouts.machine`).
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from controlplane.domain.deployments import Deployment, Evidence, Rollout, RolloutEvent
from controlplane.rollouts import machine
from controlplane.rollouts.machine import Transition
from controlplane.rollouts.notifier import publish
from controlplane.services.gates import require_gate_passed
from controlplane.store import Mutation, WriteTx
from controlplane.store.deployment_json import to_json
from controlplane.store.deployment_repos import Deployments, deployment_etag
from controlplane.store.deployment_tables import RolloutEventRow
from controlplane.store.repos import stale_etag
from modelplane.errors import FailedPrecondition

log = structlog.get_logger("modelplane.controlplane.rollouts")

#: Audit action of each rollout event action.
AUDIT_ACTIONS = {
    "started": "StartRollout",
    "advanced": "AdvanceRollout",
    "paused": "PauseRollout",
    "resumed": "ResumeRollout",
    "promoted": "PromoteRollout",
    "rolled_back": "RollbackRollout",
    "aborted": "AbortRollout",
    "drift": "DriftDetected",
    "candidate_unloaded": "CandidateUnloaded",
    "candidate_loaded": "CandidateLoaded",
}


def record_event(
    tx: WriteTx,
    deployment: Deployment,
    rollout: Rollout | None,
    action: str,
    reason: str,
    actor: str,
    evidence: Evidence | None,
    before: object,
    after: object,
) -> RolloutEvent:
    """Add a rollout event and its audit record (attributed to ``actor``)."""
    made = Deployments(tx.session).add_event(
        RolloutEventRow(
            deployment_id=deployment.id,
            rollout_id=rollout.id if rollout else "",
            state=rollout.state if rollout else "",
            phase=rollout.phase if rollout else "",
            step=rollout.step if rollout else 0,
            candidate_percent=rollout.candidate_percent if rollout else 0.0,
            action=action,
            reason=reason,
            actor=actor,
            evidence=to_json(evidence) or {},
            create_time=tx.now,
        )
    )
    tx.mutations.append(
        Mutation(
            AUDIT_ACTIONS.get(action, action),
            deployment.name,
            actor,
            tx.request_id,
            before,
            after,
        )
    )
    tx.resource = deployment.name
    return made


def apply(
    tx: WriteTx,
    deployment: Deployment,
    transition: Transition,
    actor: str,
    *,
    evidence: Evidence | None = None,
    strict: bool = True,
) -> Deployment | None:
    """Persist ``transition`` of ``deployment`` (as read in this transaction).

    Returns the deployment afterwards, or None when another writer moved it first; with
    ``strict`` that case raises ABORTED instead. A promotion the deployment's gate refuses
    raises its FAILED_PRECONDITION (GATE_FAILED) with ``strict`` (a person's action), and is
    persisted as a pause without (the automatic promotion after a canary's last step or a
    blue/green watch).
    """
    repo = Deployments(tx.session)
    current = repo.row(deployment.id)
    assert current is not None
    if deployment_etag(current) != deployment.etag:
        if strict:
            raise stale_etag(deployment.name)
        return None
    if transition.action == "promoted":
        transition = _gated(tx, deployment, transition, strict)
    rollout = transition.rollout
    if evidence is not None:
        rollout = replace(rollout, evidence=evidence)
    moved = repo.compare_and_set(
        deployment.id,
        current.revision,
        {"champion_version": transition.champion_version, "rollout_id": rollout.id},
        tx.now,
        bump_generation=True,
    )
    if not moved:
        if strict:
            raise stale_etag(deployment.name)
        return None
    after_row = repo.row(deployment.id)
    assert after_row is not None
    rollout, step_generation = _carried(repo, rollout, transition, after_row.generation)
    repo.save_rollout(rollout, step_generation=step_generation)
    if evidence is not None:
        repo.set_evidence(deployment.id, rollout.id, to_json(evidence), None)
    after = repo.get(deployment.id)
    assert after is not None
    record_event(
        tx,
        after,
        after.rollout,
        transition.action,
        transition.reason,
        actor,
        evidence if evidence is not None else rollout.evidence,
        deployment,
        after,
    )
    publish(tx.session, deployment.id)
    return after


def _carried(
    repo: Deployments, rollout: Rollout, transition: Transition, generation: int
) -> tuple[Rollout, int]:
    """``rollout`` as saved after ``transition``, and the generation its step begins with: the
    deployment's new ``generation`` when the step restarts, else (a pause) the one it began
    with, so that its kept sum goes on and the reports of sidecars still at that generation
    still count (see :mod:`controlplane.rollouts.step_sum`); a step that goes on also keeps its
    candidate request count as stored, which a report may have raised after ``rollout`` was
    read (it counts its requests before it judges: a gate's hold comes after)."""
    if not transition.restarts:
        row = repo.rollout_row(rollout.deployment_id, rollout.id)
        if row is not None:
            kept = replace(rollout, step_candidate_requests=row.step_candidate_requests)
            return kept, row.step_generation
    return rollout, generation


def _gated(tx: WriteTx, d: Deployment, promotion: Transition, strict: bool) -> Transition:
    try:
        require_gate_passed(tx, d.model_id, promotion.champion_version, d.name)
    except FailedPrecondition as exc:
        r = d.active_rollout
        if strict or r is None:
            raise
        why = f"promotion held: {exc.message}; resume the rollout once the gate passes"
        log.warning("rollout promotion held by the gate", deployment=d.id, rollout=r.id)
        return machine.gate_hold(r, why)
    return promotion
