"""AuditService over gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from controlplane.api import converters as cv
from controlplane.api import governance_converters as gcv
from controlplane.services.audit_trail import AuditTrailService
from modelplane.v1 import audit_pb2, audit_pb2_grpc


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Thin adapter from AuditService RPCs to :class:`AuditTrailService`."""

    def __init__(self, trail: AuditTrailService) -> None:
        self.trail = trail

    def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListAuditEventsResponse:
        since = cv.time_from_proto(request.since, "since") if request.HasField("since") else None
        events, token = self.trail.list_events(
            request.resource, request.actor, since, request.page_size, request.page_token
        )
        return audit_pb2.ListAuditEventsResponse(
            events=[gcv.event_to_proto(e) for e in events], next_page_token=token
        )

    def ExportAuditEvents(
        self, request: audit_pb2.ExportAuditEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.ExportAuditEventsResponse]:
        for chunk in self.trail.export(request.format):
            yield audit_pb2.ExportAuditEventsResponse(chunk=chunk)

    def CreateCheckpoint(
        self, request: audit_pb2.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.Checkpoint:
        return gcv.checkpoint_to_proto(self.trail.checkpoint())

    def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: grpc.ServicerContext
    ) -> audit_pb2.VerifyAuditResponse:
        checkpoint = (
            gcv.checkpoint_from_proto(request.checkpoint)
            if request.HasField("checkpoint")
            else None
        )
        # The walk stops once the caller no longer waits (deadline passed, or cancelled).
        return gcv.verify_to_proto(self.trail.verify(checkpoint, wanted=context.is_active))
