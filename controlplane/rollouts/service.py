"""Rollouts: starting them, people's actions on them, their events, and the time-driven
transitions the reconciler applies. Window reports are in :mod:`controlplane.rollouts.reports`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from controlplane.domain.deployments import (
    Deployment,
    RolloutEvent,
    RolloutSpec,
    UnloadedCandidate,
)
from controlplane.names import check_text
from controlplane.rollouts import machine, transitions
from controlplane.rollouts.compatibility import describe, interface_changes
from controlplane.rollouts.drift_reads import (
    DEPLOYMENT_GUARDS,
    ROLLOUT_GUARDS,
    require_drift_measured,
)
from controlplane.rollouts.machine import AUTOMATIC_ACTOR, Transition
from controlplane.rollouts.notifier import GenerationHub
from controlplane.services.deployments import (
    DeploymentService,
    parse_deployment,
    require_deployment,
    require_servable,
)
from controlplane.services.gates import require_gate_passed
from controlplane.services.governance_names import new_id
from controlplane.services.models import lock_model
from controlplane.services.versions import require_version
from controlplane.store import Store, Tx
from controlplane.store.deployment_repos import Deployments
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import stale_etag
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.server.context import RequestContext

log = structlog.get_logger("modelplane.controlplane.rollouts")

#: RPC name of each manual action (what request ids and audit records are keyed on).
ACTION_METHODS = {
    "pause": "PauseRollout",
    "resume": "ResumeRollout",
    "abort": "AbortRollout",
    "promote": "PromoteRollout",
    "rollback": "RollbackRollout",
}
SYSTEM = RequestContext(principal=AUTOMATIC_ACTOR)


def _require_compatible(tx: Tx, d: Deployment, candidate_version: int) -> None:
    """FAILED_PRECONDITION (INCOMPATIBLE_SIGNATURE) when the candidate would refuse requests
    the champion takes, or answer them in another form (see :mod:`.compatibility`)."""
    champion = require_version(tx, d.model_id, d.champion_version)
    candidate = require_version(tx, d.model_id, candidate_version)
    changes = interface_changes(champion.signature, candidate.signature)
    if changes:
        raise FailedPrecondition(
            f"version {candidate_version} cannot take the traffic of {d.name}'s champion, "
            f"version {d.champion_version}: {describe(changes)}; callers' requests would be "
            "refused by it. Deploy it as a new deployment, or register a version with the "
            "champion's inputs and outputs",
            reason="INCOMPATIBLE_SIGNATURE",
            metadata={"candidate": candidate.name, "champion": champion.name},
        )


def _candidate_unloaded(d: Deployment, failing: list[UnloadedCandidate]) -> FailedPrecondition:
    """The refusal of a promotion that ``failing`` replicas could not follow."""
    r = d.active_rollout
    assert r is not None
    who = "; ".join(f"{u.replica} ({u.error or 'no reason given'})" for u in failing)
    return FailedPrecondition(
        f"{len(failing)} replica(s) of {d.name} cannot load candidate version "
        f"{r.candidate_version}: {who}. Promoted, they would keep serving version "
        f"{r.champion_version} and a new pod would not become ready; fix the candidate's "
        "artifact, or promote with force to do it anyway",
        reason="CANDIDATE_UNLOADED",
        metadata={
            "candidate_version": str(r.candidate_version),
            "replicas": ",".join(u.replica for u in failing),
        },
    )


class RolloutService:
    """Starts rollouts and moves them: by people's actions and as time passes."""

    def __init__(
        self,
        store: Store,
        deployments: DeploymentService,
        hub: GenerationHub,
        *,
        switch_seconds: float = 2.0,
        report_retention_seconds: float = 3600.0,
        unloaded_max_age_seconds: float = 6.0,
    ) -> None:
        self.store = store
        self.deployments = deployments
        self.hub = hub
        self.switch_seconds = switch_seconds
        self.report_retention = timedelta(seconds=report_retention_seconds)
        self.unloaded_max_age = timedelta(seconds=unloaded_max_age_seconds)
        self._last_prune = datetime.min.replace(tzinfo=UTC)

    def start(
        self,
        ctx: RequestContext,
        name: str,
        spec: RolloutSpec,
        etag: str = "",
        request_id: str = "",
    ) -> Deployment:
        """Start a rollout of ``spec`` (already checked, see :func:`build_spec`)."""
        deployment_id = parse_deployment(name)
        request = {"name": name, "spec": spec, "etag": etag}
        with self.store.write(ctx, "StartRollout", request_id, request=request) as tx:
            d = require_deployment(tx, deployment_id)
            if tx.replay is not None:
                return self.deployments.finish(d)
            if etag and etag != d.etag:
                raise stale_etag(d.name)
            lock_model(tx, d.model_id)
            if d.active_rollout is not None:
                raise FailedPrecondition(
                    f"{d.name} already has rollout {d.active_rollout.id} in progress "
                    f"({d.active_rollout.state}); promote, roll back or abort it first",
                    reason="ROLLOUT_IN_PROGRESS",
                    metadata={"rollout": d.active_rollout.id},
                )
            if spec.candidate_version == d.champion_version:
                raise InvalidArgument(
                    f"version {spec.candidate_version} is already the champion of {d.name}; "
                    "choose another candidate",
                    reason="CANDIDATE_IS_CHAMPION",
                    metadata={"field": "rollout.candidate_version"},
                )
            require_servable(tx, d.model_id, spec.candidate_version, "rollout.candidate_version")
            _require_compatible(tx, d, spec.candidate_version)
            require_drift_measured(
                tx,
                d.model_id,
                spec.strategy,
                d.champion_version,
                spec.candidate_version,
                [(DEPLOYMENT_GUARDS, d.guards), (ROLLOUT_GUARDS, spec.guards)],
            )
            require_gate_passed(tx, d.model_id, spec.candidate_version, d.name)
            rollout = machine.start(
                new_id("ro"), d.id, spec, d.champion_version, ctx.principal, "", tx.now
            )
            why = f"{spec.strategy} rollout of version {spec.candidate_version} started"
            after = transitions.apply(
                tx, d, Transition("started", rollout, d.champion_version, why), ctx.principal
            )
            assert after is not None
        self.hub.changed(deployment_id)
        return self.deployments.finish(after)

    def act(
        self,
        ctx: RequestContext,
        action: str,
        name: str,
        reason: str = "",
        etag: str = "",
        request_id: str = "",
        *,
        force: bool = False,
    ) -> Deployment:
        """A person's ``pause``, ``resume``, ``abort``, ``promote`` or ``rollback``; ``force``
        promotes while replicas report the candidate unloaded."""
        method = ACTION_METHODS[action]
        deployment_id = parse_deployment(name)
        check_text(reason, "reason", 2000)
        request: dict[str, object] = {"name": name, "reason": reason, "etag": etag}
        if force:
            request["force"] = True
        with self.store.write(ctx, method, request_id, request=request) as tx:
            d = require_deployment(tx, deployment_id)
            if tx.replay is not None:
                return self.deployments.finish(d)
            if etag and etag != d.etag:
                raise stale_etag(d.name)
            # A phase restarted now begins after every report stored before (see step_sum).
            tx.restamp()
            why = reason or f"{action} by {ctx.principal}"
            failing = self._unloaded(d, tx.now) if action == "promote" else []
            if failing:
                who = ", ".join(u.replica for u in failing)
                why += f" (forced while {who} could not load the candidate)"
            transition = machine.manual(d.rollout, action, tx.now, why, d.name)
            if action == "promote":
                require_servable(
                    tx, d.model_id, transition.champion_version, "rollout.candidate_version"
                )
                if failing and not force:
                    raise _candidate_unloaded(d, failing)
            after = transitions.apply(tx, d, transition, ctx.principal)
            assert after is not None
        self.hub.changed(deployment_id)
        return self.deployments.finish(after)

    def _unloaded(self, d: Deployment, now: datetime) -> list[UnloadedCandidate]:
        """The replicas, still reporting, that say they cannot load the candidate of ``d``'s
        rollout (see :mod:`.unloaded`)."""
        r = d.active_rollout
        if r is None or r.evidence is None:
            return []
        return [
            u
            for u in r.evidence.unloaded
            if u.version == r.candidate_version and u.last_seen >= now - self.unloaded_max_age
        ]

    def list_events(
        self, parent: str, page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[RolloutEvent], str]:
        """A deployment's rollout events, newest first."""
        deployment_id = parse_deployment(parent, "parent")
        query = {"list": "rolloutEvents", "parent": parent}
        after = decode(page_token, query)
        with self.store.read() as tx:
            require_deployment(tx, deployment_id)
            items, next_key = Deployments(tx.session).events_page(
                deployment_id, after, page_size(page_size_)
            )
        return items, encode(query, next_key) if next_key else ""

    # Time-driven transitions ------------------------------------------------------------------

    def advance_if_due(self, deployment_id: str) -> bool:
        """Apply the deployment's due time-driven transition; True when one was applied here
        (False when none was due or another replica applied it first)."""
        with self.store.write(SYSTEM, "AdvanceRollout") as tx:
            d = Deployments(tx.session).get(deployment_id, lock=True)
            tx.restamp()  # as in act
            r = d.active_rollout if d else None
            transition = machine.due(r, tx.now, self.switch_seconds) if r else None
            if d is None or transition is None or transition.needs_verdict:
                return False
            moved = transitions.apply(tx, d, transition, AUTOMATIC_ACTOR, strict=False)
        if moved is not None:
            self.hub.changed(deployment_id)
            log.info(
                "rollout moved",
                deployment=deployment_id,
                action=transition.action,
                state=transition.rollout.state,
                percent=transition.rollout.candidate_percent,
            )
        return moved is not None

    def tick(self) -> int:
        """One reconciler pass over every running rollout; returns transitions applied."""
        now = datetime.now(UTC)
        with self.store.read() as tx:
            repo = Deployments(tx.session)
            due = []
            for deployment_id, _ in repo.running():
                d = repo.get(deployment_id)
                r = d.active_rollout if d else None
                t = machine.due(r, now, self.switch_seconds) if r is not None else None
                # A canary step or blue/green phase moves on a window report, once its
                # guards pass over it.
                if t is not None and not t.needs_verdict:
                    due.append(deployment_id)
        applied = sum(self.advance_if_due(deployment_id) for deployment_id in due)
        if now - self._last_prune > timedelta(minutes=1):
            self._last_prune = now
            with self.store.write(SYSTEM, "PruneWindowReports") as tx:
                Deployments(tx.session).prune_reports(now - self.report_retention)
        return applied
