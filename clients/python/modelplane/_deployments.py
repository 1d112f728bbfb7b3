"""SDK methods of the DeploymentService, mixed into :class:`modelplane.Client`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from modelplane.errors import InvalidArgument, ModelplaneError, error_info
from modelplane.v1 import deployments_pb2, deployments_pb2_grpc

T = TypeVar("T")

STRATEGIES = {
    "shadow": deployments_pb2.ROLLOUT_STRATEGY_SHADOW,
    "canary": deployments_pb2.ROLLOUT_STRATEGY_CANARY,
    "ab": deployments_pb2.ROLLOUT_STRATEGY_AB,
    "blue_green": deployments_pb2.ROLLOUT_STRATEGY_BLUE_GREEN,
}


#: The longest drift cooldown the SDK sends: 366 days. Protobuf's Duration would carry up to
#: about 10,000 years, but a cooldown beyond a year is a typo, and one beyond Duration's range
#: is stored yet cannot be read back as JSON.
MAX_DRIFT_COOLDOWN_SECONDS = 366 * 86400
#: The longest canary step or blue-green phase, as the server allows it: 7 days.
MAX_STEP_DURATION_SECONDS = 7 * 86400


def check_seconds(value: float, what: str, maximum: float, reason: str) -> float:
    """``value`` when it is a number of seconds from 0 to ``maximum``; else
    :class:`InvalidArgument` with ``reason`` (NaN, infinities and values no Duration holds
    included), raised before anything is sent."""
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise InvalidArgument(
            f"{what} must be between 0 and {maximum:.0f} seconds, not {value:g}",
            reason=reason,
            metadata={"field": what, "maximum_seconds": f"{maximum:.0f}"},
        )
    return value


def _duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` to the nanosecond (the server refuses what it cannot keep, such as a
    positive duration under 1 µs, rather than have it sent as 0, "the default")."""
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds} is not a duration")
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def deployment_name(deployment: str) -> str:
    """``fraud`` → ``deployments/fraud`` (full names pass through)."""
    return deployment if deployment.startswith("deployments/") else f"deployments/{deployment}"


def _thresholds(
    max_psi: float | None,
    max_drifted_share: float | None,
    min_rows: int,
    cooldown: float | None,
) -> deployments_pb2.DriftThresholds:
    out = deployments_pb2.DriftThresholds(min_rows=min_rows)
    if max_psi is not None:
        out.max_psi = max_psi
    if max_drifted_share is not None:
        out.max_drifted_share = max_drifted_share
    if cooldown is not None:
        check_seconds(
            cooldown,
            "drift_thresholds.cooldown",
            MAX_DRIFT_COOLDOWN_SECONDS,
            "INVALID_DRIFT_THRESHOLDS",
        )
        out.cooldown.CopyFrom(_duration(cooldown))
    return out


class DeploymentsMixin:
    """Deployments, rollouts, the desired-state watch and window reports.

    Strategy names: ``shadow``, ``canary``, ``ab``, ``blue_green``. Durations are seconds: a
    drift cooldown from 0 to 366 days (:data:`MAX_DRIFT_COOLDOWN_SECONDS`), a rollout step from
    0 to 7 days (:data:`MAX_STEP_DURATION_SECONDS`); other values are refused with
    :class:`InvalidArgument` before anything is sent.
    """

    deployments: deployments_pb2_grpc.DeploymentServiceStub
    timeout: float
    _metadata: tuple[tuple[str, str], ...]
    _call: Callable[..., Any]
    _error: Callable[[grpc.RpcError], ModelplaneError]
    _rid: Callable[[], str]

    def create_deployment(
        self,
        deployment_id: str,
        *,
        model: str,
        champion_version: int,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        guards: Sequence[str] = (),
        max_psi: float | None = None,
        max_drifted_share: float | None = None,
        min_rows: int = 0,
        drift_cooldown: float | None = None,
        webhook_url: str = "",
        request_id: str | None = None,
    ) -> deployments_pb2.Deployment:
        """Create ``deployments/{deployment_id}`` serving ``champion_version`` of ``model``."""
        message = deployments_pb2.Deployment(
            model=model if model.startswith("models/") else f"models/{model}",
            champion_version=champion_version,
            description=description,
            labels=dict(labels or {}),
            guards=list(guards),
            drift_thresholds=_thresholds(max_psi, max_drifted_share, min_rows, drift_cooldown),
            retraining_hook=deployments_pb2.RetrainingHook(webhook_url=webhook_url),
        )
        return self._call(  # type: ignore[no-any-return]
            self.deployments.CreateDeployment,
            deployments_pb2.CreateDeploymentRequest(
                deployment_id=deployment_id,
                deployment=message,
                request_id=request_id or self._rid(),
            ),
        )

    def get_deployment(self, deployment: str) -> deployments_pb2.Deployment:
        return self._call(  # type: ignore[no-any-return]
            self.deployments.GetDeployment,
            deployments_pb2.GetDeploymentRequest(name=deployment_name(deployment)),
        )

    def list_deployments(self, *, page_size: int = 0) -> Iterator[deployments_pb2.Deployment]:
        token = ""
        while True:
            page = self._call(
                self.deployments.ListDeployments,
                deployments_pb2.ListDeploymentsRequest(page_size=page_size, page_token=token),
            )
            yield from page.deployments
            token = page.next_page_token
            if not token:
                return

    def update_deployment(
        self,
        deployment: str,
        *,
        etag: str = "",
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        guards: Sequence[str] | None = None,
        drift_thresholds: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        request_id: str | None = None,
    ) -> deployments_pb2.Deployment:
        """Change the fields given. ``drift_thresholds`` replaces all four thresholds: keys
        ``max_psi``, ``max_drifted_share``, ``min_rows``, ``cooldown`` (seconds)."""
        message = deployments_pb2.Deployment(name=deployment_name(deployment), etag=etag)
        paths = []
        if description is not None:
            message.description = description
            paths.append("description")
        if labels is not None:
            message.labels.update(labels)
            paths.append("labels")
        if guards is not None:
            message.guards.extend(guards)
            paths.append("guards")
        if drift_thresholds is not None:
            t = dict(drift_thresholds)
            message.drift_thresholds.CopyFrom(
                _thresholds(
                    t.get("max_psi"),
                    t.get("max_drifted_share"),
                    int(t.get("min_rows", 0)),
                    t.get("cooldown"),
                )
            )
            paths.append("drift_thresholds")
        if webhook_url is not None:
            message.retraining_hook.webhook_url = webhook_url
            paths.append("retraining_hook")
        return self._call(  # type: ignore[no-any-return]
            self.deployments.UpdateDeployment,
            deployments_pb2.UpdateDeploymentRequest(
                deployment=message,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
                request_id=request_id or self._rid(),
            ),
        )

    def delete_deployment(
        self, deployment: str, *, etag: str = "", request_id: str | None = None
    ) -> None:
        self._call(
            self.deployments.DeleteDeployment,
            deployments_pb2.DeleteDeploymentRequest(
                name=deployment_name(deployment), etag=etag, request_id=request_id or self._rid()
            ),
        )

    def start_rollout(
        self,
        deployment: str,
        candidate_version: int,
        *,
        strategy: str = "canary",
        steps: Sequence[float] = (),
        split: float | None = None,
        shadow_fraction: float | None = None,
        step_duration: float | None = None,
        min_requests: int | None = None,
        guards: Sequence[str] = (),
        etag: str = "",
        request_id: str | None = None,
    ) -> deployments_pb2.Deployment:
        """Start a rollout; settings left out (None, or empty ``steps``) take the server's
        defaults. The request cannot carry a 0 for ``split``, ``shadow_fraction``,
        ``step_duration`` (seconds) or ``min_requests`` apart from "default", so an explicit 0
        is refused here (:class:`InvalidArgument`, with the reason the server gives other bad
        values) rather than sent, as is a ``step_duration`` outside 0 to 7 days and a
        ``strategy`` not in :data:`STRATEGIES`; the server judges every other value."""
        if strategy not in STRATEGIES:
            raise InvalidArgument(
                f"strategy {strategy!r} is invalid: use one of {', '.join(STRATEGIES)}",
                reason="INVALID_STRATEGY",
                metadata={"field": "rollout.strategy"},
            )
        zero_reasons = {
            "split": (split, "INVALID_SPLIT"),
            "shadow_fraction": (shadow_fraction, "INVALID_SHADOW_FRACTION"),
            "step_duration": (step_duration, "INVALID_DURATION"),
            "min_requests": (min_requests, "INVALID_MIN_REQUESTS"),
        }
        for key, (value, reason) in zero_reasons.items():
            if value is not None and value == 0:
                raise InvalidArgument(
                    f"{key} must be above 0 (leave it out for the server's default), not {value}",
                    reason=reason,
                )
        rollout = deployments_pb2.Rollout(
            candidate_version=candidate_version,
            strategy=STRATEGIES[strategy],
            steps=list(steps),
            split=split or 0.0,
            shadow_fraction=shadow_fraction or 0.0,
            min_requests=min_requests or 0,
            guards=list(guards),
        )
        if step_duration is not None:
            check_seconds(
                step_duration, "step_duration", MAX_STEP_DURATION_SECONDS, "INVALID_DURATION"
            )
            rollout.step_duration.CopyFrom(_duration(step_duration))
        return self._call(  # type: ignore[no-any-return]
            self.deployments.StartRollout,
            deployments_pb2.StartRolloutRequest(
                name=deployment_name(deployment),
                rollout=rollout,
                etag=etag,
                request_id=request_id or self._rid(),
            ),
        )

    def _rollout_action(
        self,
        method: Any,
        request_cls: Any,
        deployment: str,
        reason: str,
        etag: str,
        rid: str | None,
        **fields: Any,
    ) -> deployments_pb2.Deployment:
        return self._call(  # type: ignore[no-any-return]
            method,
            request_cls(
                name=deployment_name(deployment),
                reason=reason,
                etag=etag,
                request_id=rid or self._rid(),
                **fields,
            ),
        )

    def pause_rollout(
        self, deployment: str, *, reason: str = "", etag: str = "", request_id: str | None = None
    ) -> deployments_pb2.Deployment:
        """Hold the running rollout where it is (guards still roll it back)."""
        return self._rollout_action(
            self.deployments.PauseRollout,
            deployments_pb2.PauseRolloutRequest,
            deployment,
            reason,
            etag,
            request_id,
        )

    def resume_rollout(
        self, deployment: str, *, reason: str = "", etag: str = "", request_id: str | None = None
    ) -> deployments_pb2.Deployment:
        """Resume a paused rollout; the current step's clock restarts."""
        return self._rollout_action(
            self.deployments.ResumeRollout,
            deployments_pb2.ResumeRolloutRequest,
            deployment,
            reason,
            etag,
            request_id,
        )

    def abort_rollout(
        self, deployment: str, *, reason: str = "", etag: str = "", request_id: str | None = None
    ) -> deployments_pb2.Deployment:
        """End the rollout with the champion serving everything (recorded as aborted)."""
        return self._rollout_action(
            self.deployments.AbortRollout,
            deployments_pb2.AbortRolloutRequest,
            deployment,
            reason,
            etag,
            request_id,
        )

    def promote_rollout(
        self,
        deployment: str,
        *,
        reason: str = "",
        etag: str = "",
        request_id: str | None = None,
        force: bool = False,
    ) -> deployments_pb2.Deployment:
        """Make the candidate the champion now. Refused (CANDIDATE_UNLOADED) while a replica
        reports it cannot load the candidate, unless ``force``."""
        return self._rollout_action(
            self.deployments.PromoteRollout,
            deployments_pb2.PromoteRolloutRequest,
            deployment,
            reason,
            etag,
            request_id,
            force=force,
        )

    def rollback_rollout(
        self, deployment: str, *, reason: str = "", etag: str = "", request_id: str | None = None
    ) -> deployments_pb2.Deployment:
        """End the rollout with the champion serving everything (recorded as rolled back)."""
        return self._rollout_action(
            self.deployments.RollbackRollout,
            deployments_pb2.RollbackRolloutRequest,
            deployment,
            reason,
            etag,
            request_id,
        )

    def list_rollout_events(
        self, deployment: str, *, page_size: int = 0
    ) -> Iterator[deployments_pb2.RolloutEvent]:
        """A deployment's rollout transitions with their evidence, newest first."""
        token = ""
        while True:
            page = self._call(
                self.deployments.ListRolloutEvents,
                deployments_pb2.ListRolloutEventsRequest(
                    parent=deployment_name(deployment), page_size=page_size, page_token=token
                ),
            )
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def watch_deployment(
        self, deployment: str, *, replica: str = "", timeout: float | None = None
    ) -> Iterator[deployments_pb2.DeploymentState]:
        """The desired state now, then on every change and every heartbeat; runs until the
        server ends the stream, which raises (``NotFound``, DEPLOYMENT_NOT_FOUND: the
        deployment was deleted; ``Unavailable``, SERVER_SHUTTING_DOWN: the control plane
        stops, watch again; ``Aborted``, DEPLOYMENT_RECREATED: created again for another
        model), or until ``timeout`` (seconds, none by default) passes or the caller stops
        iterating (the call is cancelled), which end it without an error."""
        started = time.monotonic()
        stream = self.deployments.WatchDeployment(
            deployments_pb2.WatchDeploymentRequest(
                name=deployment_name(deployment), replica=replica
            ),
            timeout=timeout,
            metadata=self._metadata,
        )
        answered = False
        try:
            for state in stream:
                answered = True
                yield state
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED:
                return
            if (
                timeout is not None
                and answered
                and code == grpc.StatusCode.DEADLINE_EXCEEDED
                and error_info(exc) is None
                and time.monotonic() - started >= timeout * 0.99
            ):
                # ``timeout`` passed on a stream that was answering: it ran its time. A server
                # that never answered, or a stream cut short, still raises.
                return
            raise self._error(exc) from None
        finally:
            stream.cancel()

    def report_window(
        self,
        deployment: str,
        *,
        replica: str,
        sequence: int,
        generation: int = 0,
        rollout_id: str = "",
        arms: Sequence[deployments_pb2.ArmSummary] = (),
        shadow: deployments_pb2.ShadowSummary | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> deployments_pb2.ReportWindowResponse:
        """Send one replica's window summary (what sidecars do every report interval)."""
        request = deployments_pb2.ReportWindowRequest(
            name=deployment_name(deployment),
            replica=replica,
            sequence=sequence,
            generation=generation,
            rollout_id=rollout_id,
            arms=list(arms),
        )
        if shadow is not None:
            request.shadow.CopyFrom(shadow)
        if start_time is not None:
            request.start_time.FromDatetime(start_time)
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        return self._call(  # type: ignore[no-any-return]
            self.deployments.ReportWindow, request
        )
