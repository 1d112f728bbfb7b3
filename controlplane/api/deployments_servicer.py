"""DeploymentService over gRPC: deployments, rollouts, the desired-state watch, window reports."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import empty_pb2

from controlplane.api import deployments_converters as dcv
from controlplane.auth.permissions import ADMIN
from controlplane.domain.deployments import Deployment
from controlplane.rollouts.reports import ReportService
from controlplane.rollouts.service import RolloutService
from controlplane.rollouts.spec import build_spec
from controlplane.services.deployments import DEPLOYMENT_UPDATE_PATHS, DeploymentService
from modelplane.server import current_context
from modelplane.v1 import deployments_pb2 as pb
from modelplane.v1 import deployments_pb2_grpc


def _shown(d: Deployment) -> pb.Deployment:
    """``d`` as the caller may see it: a retraining webhook URL (often carrying a token in its
    path or query) in full only to those who may set it (admins, or anyone while access
    control is off), else only its scheme and host."""
    ctx = current_context()
    return dcv.deployment_to_proto(d, full_webhook=not ctx.authenticated or ADMIN in ctx.roles)


class DeploymentServicer(deployments_pb2_grpc.DeploymentServiceServicer):
    """Thin adapter from DeploymentService RPCs to the deployment and rollout services."""

    def __init__(
        self, deployments: DeploymentService, rollouts: RolloutService, reports: ReportService
    ) -> None:
        self.deployments = deployments
        self.rollouts = rollouts
        self.reports = reports

    def CreateDeployment(
        self, request: pb.CreateDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        d = request.deployment
        made = self.deployments.create(
            current_context(),
            request.deployment_id,
            d.model,
            d.champion_version,
            description=d.description,
            labels=dict(d.labels),
            guards=list(d.guards),
            drift_thresholds=dcv.thresholds_from_proto(d.drift_thresholds),
            webhook_url=d.retraining_hook.webhook_url,
            request_id=request.request_id,
        )
        return _shown(made)

    def GetDeployment(
        self, request: pb.GetDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return _shown(self.deployments.get(request.name))

    def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        items, token = self.deployments.list_deployments(request.page_size, request.page_token)
        return pb.ListDeploymentsResponse(
            deployments=[_shown(d) for d in items], next_page_token=token
        )

    def UpdateDeployment(
        self, request: pb.UpdateDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        d = request.deployment
        paths = list(request.update_mask.paths)
        if paths == ["*"]:
            paths = list(DEPLOYMENT_UPDATE_PATHS)
        values = {
            "description": d.description,
            "labels": dict(d.labels),
            "guards": list(d.guards),
            "drift_thresholds": dcv.thresholds_from_proto(d.drift_thresholds),
            "retraining_hook": d.retraining_hook.webhook_url,
        }
        updated = self.deployments.update(
            current_context(), d.name, d.etag, paths, values, request.request_id
        )
        return _shown(updated)

    def DeleteDeployment(
        self, request: pb.DeleteDeploymentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.deployments.delete(current_context(), request.name, request.etag, request.request_id)
        return empty_pb2.Empty()

    def StartRollout(
        self, request: pb.StartRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        r = request.rollout
        spec = build_spec(
            candidate_version=r.candidate_version,
            strategy=dcv.strategy_from_proto(r.strategy),
            steps=list(r.steps),
            split=r.split,
            shadow_fraction=r.shadow_fraction,
            step_duration_seconds=dcv.kept_seconds_of(r.step_duration, "rollout.step_duration"),
            min_requests=r.min_requests,
            guards=list(r.guards),
        )
        started = self.rollouts.start(
            current_context(), request.name, spec, request.etag, request.request_id
        )
        return _shown(started)

    def _act(self, action: str, request: pb.PauseRolloutRequest) -> pb.Deployment:
        moved = self.rollouts.act(
            current_context(),
            action,
            request.name,
            request.reason,
            request.etag,
            request.request_id,
            force=isinstance(request, pb.PromoteRolloutRequest) and request.force,
        )
        return _shown(moved)

    def PauseRollout(
        self, request: pb.PauseRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return self._act("pause", request)

    def ResumeRollout(
        self, request: pb.ResumeRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return self._act("resume", request)  # type: ignore[arg-type]

    def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return self._act("abort", request)  # type: ignore[arg-type]

    def PromoteRollout(
        self, request: pb.PromoteRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return self._act("promote", request)  # type: ignore[arg-type]

    def RollbackRollout(
        self, request: pb.RollbackRolloutRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        return self._act("rollback", request)  # type: ignore[arg-type]

    def ListRolloutEvents(
        self, request: pb.ListRolloutEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListRolloutEventsResponse:
        items, token = self.rollouts.list_events(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListRolloutEventsResponse(
            events=[dcv.event_to_proto(e) for e in items], next_page_token=token
        )

    def WatchDeployment(
        self, request: pb.WatchDeploymentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DeploymentState]:
        for state in self.deployments.watch(request.name, context.is_active):
            yield dcv.state_to_proto(state)

    def ReportWindow(
        self, request: pb.ReportWindowRequest, context: grpc.ServicerContext
    ) -> pb.ReportWindowResponse:
        result = self.reports.report(
            current_context(), request.name, dcv.report_from_proto(request)
        )
        return pb.ReportWindowResponse(generation=result.generation, accepted=result.accepted)
