"""Deployments: create, read, update and delete them, and the desired state sidecars follow."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controlplane.auth.policy import listed_models
from controlplane.domain import VersionState
from controlplane.domain.deployments import (
    Deployment,
    DeploymentState,
    DriftThresholds,
    ServedVersion,
)
from controlplane.names import check_id, check_labels, check_text, parse_model
from controlplane.rollouts.drift_reads import DEPLOYMENT_GUARDS, require_drift_measured
from controlplane.rollouts.guards import check_guards
from controlplane.rollouts.hooks import HookRunner, check_webhook_url
from controlplane.rollouts.notifier import GenerationHub, publish
from controlplane.services.filters import masked_changes
from controlplane.services.gates import require_gate_passed
from controlplane.services.models import lock_model
from controlplane.services.versions import require_version
from controlplane.store import Store, Tx, WriteTx
from controlplane.store.deployment_repos import Deployments
from controlplane.store.deployment_tables import DeploymentRow
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import stale_etag
from modelplane.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from modelplane.server.context import RequestContext, current_context

DEPLOYMENT_UPDATE_PATHS = (
    "description",
    "labels",
    "guards",
    "drift_thresholds",
    "retraining_hook",
)


@dataclass(frozen=True)
class WatchedState(DeploymentState):
    """A desired state as ``WatchDeployment`` streams it: with when its deployment was created
    (a deployment deleted and created again under the same name is another one, whose
    generations start over) and how often the stream repeats it while nothing changes."""

    create_time: datetime | None = None
    heartbeat_seconds: float = 0.0


def parse_deployment(name: str, what: str = "name") -> str:
    """``deployments/fraud`` → ``fraud``; INVALID_ARGUMENT (INVALID_NAME) otherwise."""
    if not name:
        raise InvalidArgument(
            f"{what} is required (deployments/{{deployment}})", reason="INVALID_NAME"
        )
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "deployments":
        raise InvalidArgument(
            f"resource name {name[:80]!r} is invalid; expected deployments/{{deployment}}",
            reason="INVALID_NAME",
        )
    return check_id(parts[1], "deployment id")


def require_deployment(tx: Tx, deployment_id: str) -> Deployment:
    """The deployment, or NOT_FOUND. In a write transaction its row is locked first: every
    writer of a deployment (API calls, window reports, the reconciler) then takes the
    deployment's lock before any rollout or report row, so two of them queue instead of
    deadlocking on each other's rows."""
    got = Deployments(tx.session).get(deployment_id, lock=isinstance(tx, WriteTx))
    if got is None:
        raise NotFound(
            f"deployment deployments/{deployment_id} does not exist",
            reason="DEPLOYMENT_NOT_FOUND",
        )
    return got


def _shutting_down(deployment_id: str) -> Unavailable:
    """How a watch ends when its server stops: retryable, unlike a clean end."""
    return Unavailable(
        f"the control plane is shutting down; watch deployments/{deployment_id} again (another "
        "replica, or this one once restarted, answers)",
        reason="SERVER_SHUTTING_DOWN",
    )


def _exists(deployment_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"deployment deployments/{deployment_id} already exists", reason="DEPLOYMENT_EXISTS"
    )


#: The longest drift cooldown a deployment takes (the SDK's bound too).
MAX_COOLDOWN_SECONDS = 366 * 86400.0


def check_thresholds(t: DriftThresholds) -> DriftThresholds:
    """Drift thresholds in range; INVALID_ARGUMENT (INVALID_DRIFT_THRESHOLDS)."""

    def bad(message: str) -> InvalidArgument:
        return InvalidArgument(
            f"drift_thresholds.{message}",
            reason="INVALID_DRIFT_THRESHOLDS",
            metadata={"field": "drift_thresholds"},
        )

    if t.max_psi is not None and not (math.isfinite(t.max_psi) and t.max_psi >= 0):
        raise bad(f"max_psi must be a number >= 0, got {t.max_psi}")
    if t.max_drifted_share is not None and not (0 <= t.max_drifted_share <= 1):
        raise bad(f"max_drifted_share must be in [0, 1], got {t.max_drifted_share}")
    if t.min_rows < 0:
        raise bad(f"min_rows must not be negative, got {t.min_rows}")
    if not (math.isfinite(t.cooldown_seconds) and 0 <= t.cooldown_seconds <= MAX_COOLDOWN_SECONDS):
        raise bad(
            f"cooldown must be from 0 to {MAX_COOLDOWN_SECONDS:g} seconds (366 days), got "
            f"{t.cooldown_seconds:g}s"
        )
    return t


def thresholds_json(t: DriftThresholds) -> dict[str, Any]:
    return {
        "max_psi": t.max_psi,
        "max_drifted_share": t.max_drifted_share,
        "min_rows": t.min_rows,
        "cooldown_seconds": t.cooldown_seconds,
    }


def _check_hook_setter(ctx: RequestContext, url: str) -> str:
    """Only admins set webhooks (checked when the caller is authenticated)."""
    url = check_webhook_url(url)
    if ctx.authenticated and "admin" not in ctx.roles:
        raise PermissionDenied(
            "only an admin may set retraining_hook.webhook_url",
            reason="ROLE_REQUIRED",
            metadata={"required_roles": "admin", "field": "retraining_hook.webhook_url"},
        )
    return url


def require_servable(tx: Tx, model_id: str, version: int, what: str) -> None:
    """NOT_FOUND for a missing version, FAILED_PRECONDITION for an archived one."""
    if version <= 0:
        raise InvalidArgument(
            f"{what} must name a version (a positive number)",
            reason="INVALID_VERSION",
            metadata={"field": what},
        )
    got = require_version(tx, model_id, version)
    if got.state is VersionState.ARCHIVED:
        raise FailedPrecondition(
            f"{got.name} is archived and cannot serve; register or choose another version",
            reason="VERSION_ARCHIVED",
            metadata={"version": got.name},
        )


class DeploymentService:
    """Deployments and their desired state."""

    def __init__(
        self,
        store: Store,
        hub: GenerationHub,
        hooks: HookRunner,
        *,
        report_interval: float = 2.0,
        regression_tolerance: float = 0.1,
        heartbeat: float = 5.0,
        max_watches: int = 256,
    ) -> None:
        self.store = store
        self.hub = hub
        self.hooks = hooks
        self.report_interval = report_interval
        self.regression_tolerance = regression_tolerance
        self.heartbeat = heartbeat
        self.max_watches = max_watches
        self._watch_slots = threading.BoundedSemaphore(max_watches)

    def finish(self, d: Deployment) -> Deployment:
        """``d`` with what only this server's configuration knows."""
        return replace(d, command_configured=self.hooks.has_command(d.id))

    def create(
        self,
        ctx: RequestContext,
        deployment_id: str,
        model: str,
        champion_version: int,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        guards: Sequence[str] = (),
        drift_thresholds: DriftThresholds | None = None,
        webhook_url: str = "",
        request_id: str = "",
    ) -> Deployment:
        """Create ``deployments/{deployment_id}`` serving ``champion_version`` of ``model``.

        ALREADY_EXISTS (DEPLOYMENT_EXISTS) when the name is taken, also by a concurrent
        request that commits first; FAILED_PRECONDITION when
        the version cannot be served, or (GATE_FAILED) when a policy governs the deployment
        (one bound to ``deployments/{deployment_id}`` already, or else one bound to
        ``deployments/*``) and the version's latest gate decision for the deployment did not
        pass on the current evidence, as for a rollout's candidate."""
        check_id(deployment_id, "deployment id")
        model_id = parse_model(model) if model else ""
        if not model_id:
            raise InvalidArgument(
                "deployment.model is required (models/{model})", reason="INVALID_NAME"
            )
        check_text(description, "description")
        labels = check_labels(dict(labels or {}))
        guards = check_guards(guards, "guards")
        thresholds = check_thresholds(drift_thresholds or DriftThresholds())
        webhook_url = _check_hook_setter(ctx, webhook_url) if webhook_url else ""
        request = {
            "deployment_id": deployment_id,
            "model": model,
            "champion_version": champion_version,
            "description": description,
            "labels": labels,
            "guards": list(guards),
            "drift_thresholds": thresholds,
            "webhook_url": webhook_url,
        }
        with self.store.write(ctx, "CreateDeployment", request_id, request=request) as tx:
            repo = Deployments(tx.session)
            if tx.replay is not None:
                return self.finish(require_deployment(tx, parse_deployment(tx.replay)))
            if repo.row(deployment_id) is not None:
                raise _exists(deployment_id)
            lock_model(tx, model_id)
            require_servable(tx, model_id, champion_version, "deployment.champion_version")
            require_gate_passed(tx, model_id, champion_version, f"deployments/{deployment_id}")
            made = repo.add(
                DeploymentRow(
                    id=deployment_id,
                    model_id=model_id,
                    description=description,
                    labels=labels,
                    champion_version=champion_version,
                    guards=list(guards),
                    drift_thresholds=thresholds_json(thresholds),
                    webhook_url=webhook_url,
                    generation=1,
                    created_by=ctx.principal,
                    create_time=tx.now,
                    update_time=tx.now,
                )
            )
            if made is None:
                # A concurrent request made it after the check above.
                raise _exists(deployment_id)
            tx.record("CreateDeployment", made.name, None, made)
            publish(tx.session, deployment_id)
        self.hub.changed(deployment_id)
        return self.finish(made)

    def get(self, name: str) -> Deployment:
        deployment_id = parse_deployment(name)
        with self.store.read() as tx:
            return self.finish(require_deployment(tx, deployment_id))

    def list_deployments(
        self, page_size_: int = 0, page_token: str = "", ctx: RequestContext | None = None
    ) -> tuple[list[Deployment], str]:
        """A page of deployments and the next page's token ("" at the end). A caller (``ctx``,
        by default the current call's) whose roles hold only on some models is shown their
        deployments alone, selected in the query: it learns no other model's deployments, not
        even from the token, which names one of its own."""
        visible = listed_models(ctx or current_context())
        query: dict[str, str] = {"list": "deployments"}
        after = decode(page_token, query)
        with self.store.read() as tx:
            items, next_key = Deployments(tx.session).page(after, page_size(page_size_), visible)
        return [self.finish(d) for d in items], encode(query, next_key) if next_key else ""

    def update(
        self,
        ctx: RequestContext,
        name: str,
        etag: str,
        paths: list[str],
        values: Mapping[str, object],
        request_id: str = "",
    ) -> Deployment:
        deployment_id = parse_deployment(name, "deployment.name")
        checks: dict[str, Callable[[Any], object]] = {
            "guards": lambda v: list(check_guards(list(v), "guards")),
            "drift_thresholds": lambda v: thresholds_json(check_thresholds(v)),
            "retraining_hook": lambda v: _check_hook_setter(ctx, str(v)),
        }
        changes = masked_changes(paths, values, DEPLOYMENT_UPDATE_PATHS, checks)
        if "retraining_hook" in changes:
            changes["webhook_url"] = changes.pop("retraining_hook")
        request = {"name": name, "etag": etag, "changes": changes}
        with self.store.write(ctx, "UpdateDeployment", request_id, request=request) as tx:
            before = require_deployment(tx, deployment_id)
            if tx.replay is not None:
                return self.finish(before)
            r = before.active_rollout
            new_guards = changes.get("guards")
            if isinstance(new_guards, list) and r is not None:
                # The new guards come into force in the rollout in progress at once.
                require_drift_measured(
                    tx,
                    before.model_id,
                    r.strategy,
                    r.champion_version,
                    r.candidate_version,
                    [(DEPLOYMENT_GUARDS, new_guards)],
                )
            repo = Deployments(tx.session)
            after = repo.update(deployment_id, etag, changes, tx.now)
            if not after.drift_thresholds.enabled:
                # Without thresholds no drift window is kept (set again, they start afresh).
                repo.close_drift_windows(deployment_id)
            tx.record("UpdateDeployment", after.name, before, after)
            return self.finish(after)

    def delete(self, ctx: RequestContext, name: str, etag: str = "", request_id: str = "") -> None:
        deployment_id = parse_deployment(name)
        request = {"name": name, "etag": etag}
        with self.store.write(ctx, "DeleteDeployment", request_id, request=request) as tx:
            if tx.replay is not None:
                return
            before = require_deployment(tx, deployment_id)
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            if before.active_rollout is not None:
                raise FailedPrecondition(
                    f"{before.name} has rollout {before.active_rollout.id} in progress; abort, "
                    "roll back or promote it first",
                    reason="ROLLOUT_IN_PROGRESS",
                )
            Deployments(tx.session).delete(deployment_id)
            tx.record("DeleteDeployment", before.name, before, None)
            publish(tx.session, deployment_id)
        self.hub.changed(deployment_id)

    # Desired state ----------------------------------------------------------------------------

    def _state(self, tx: Tx, d: Deployment) -> WatchedState:
        r = d.active_rollout
        numbers = [d.champion_version]
        if r is not None and r.candidate_version != d.champion_version:
            numbers.append(r.candidate_version)
        versions = []
        for number in numbers:
            v = tx.versions.get(d.model_id, number)
            if v is None:
                continue
            versions.append(
                ServedVersion(
                    version=number,
                    name=v.name,
                    artifact_sha256=v.artifact.sha256,
                    artifact_size_bytes=v.artifact.size_bytes,
                    baseline_sha256=v.baseline.sha256 if v.baseline else "",
                )
            )
        last = d.rollout
        return WatchedState(
            deployment_id=d.id,
            generation=d.generation,
            model_id=d.model_id,
            versions=tuple(versions),
            champion_version=d.champion_version,
            candidate_version=r.candidate_version if r else 0,
            candidate_percent=r.candidate_percent if r else 0.0,
            shadow_fraction=r.effective_shadow_fraction if r else 0.0,
            rollout_id=last.id if last else "",
            rollout_state=last.state if last else "",
            phase=r.phase if r else "",
            report_interval_seconds=self.report_interval,
            regression_tolerance=self.regression_tolerance,
            create_time=d.create_time,
            heartbeat_seconds=self.heartbeat,
        )

    def state(self, name: str) -> WatchedState:
        """What the deployment's sidecars serve now."""
        deployment_id = parse_deployment(name)
        with self.store.read() as tx:
            return self._state(tx, require_deployment(tx, deployment_id))

    def watch(
        self, name: str, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[WatchedState]:
        """The current state at once, then on every generation change (a deployment deleted
        and created again in between included, whatever its generation), and again every
        heartbeat. Ends only with an error, never cleanly, so that no watcher takes the end
        for "nothing more will come" while the deployment still serves: UNAVAILABLE
        (SERVER_SHUTTING_DOWN) when the server stops, NOT_FOUND (DEPLOYMENT_NOT_FOUND) when
        the deployment is deleted, ABORTED (DEPLOYMENT_RECREATED) when it was deleted and
        created again for another model; when the caller leaves it just stops."""
        deployment_id = parse_deployment(name)
        if not self._watch_slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"this control plane process already serves {self.max_watches} watches; "
                "the sidecar retries. Raise max_watches (MODELPLANE_MAX_WATCHES) or run more "
                "control plane processes (--workers, replicas)",
                reason="TOO_MANY_WATCHES",
                metadata={"max_watches": str(self.max_watches)},
            )
        try:
            token = self.hub.token(deployment_id)
            current = self.state(name)
            yield current
            last_sent = time.monotonic()
            while is_active():
                if self.hub.closed:
                    raise _shutting_down(deployment_id)
                wait = min(0.25, max(0.0, last_sent + self.heartbeat - time.monotonic()))
                changed = self.hub.wait(deployment_id, token, wait)
                if self.hub.closed:
                    raise _shutting_down(deployment_id)
                due = time.monotonic() >= last_sent + self.heartbeat
                if not changed and not due:
                    continue
                token = self.hub.token(deployment_id)
                try:
                    fresh = self.state(name)
                except NotFound:
                    raise NotFound(
                        f"deployment deployments/{deployment_id} was deleted: nothing more "
                        "comes on this watch. Create it again and watch again to follow it",
                        reason="DEPLOYMENT_NOT_FOUND",
                    ) from None
                if fresh.model_id != current.model_id:
                    # Deleted and created again for another model: the caller was authorized
                    # for the model the stream opened on, so it must watch again. The new
                    # model is not named: the caller may not be allowed to see it.
                    raise Aborted(
                        f"deployment deployments/{deployment_id} was deleted and created again "
                        "for another model: watch it again (access is checked again)",
                        reason="DEPLOYMENT_RECREATED",
                    )
                if (
                    fresh.generation != current.generation
                    or fresh.create_time != current.create_time
                    or due
                ):
                    current = fresh
                    last_sent = time.monotonic()
                    yield current
        finally:
            self._watch_slots.release()
