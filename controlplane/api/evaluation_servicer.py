"""EvaluationService over gRPC."""

from __future__ import annotations

import grpc

from controlplane.api import converters as cv
from controlplane.api import governance_converters as gcv
from controlplane.services.evaluations import (
    DEFAULT_COMPARE_TO,
    EvaluationRequest,
    EvaluationService,
)
from modelplane.server import current_context
from modelplane.v1 import evaluation_pb2, evaluation_pb2_grpc, operations_pb2


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    """Thin adapter from EvaluationService RPCs to :class:`EvaluationService`."""

    def __init__(self, evaluations: EvaluationService) -> None:
        self.evaluations = evaluations

    def Evaluate(
        self, request: evaluation_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        op = self.evaluations.start(
            current_context(),
            EvaluationRequest(
                name=request.name,
                dataset_sha256=request.dataset_sha256,
                label=request.label,
                dataset_role=request.dataset_role or "holdout",
                features=tuple(request.features),
                slices=tuple(request.slice_columns),
                protected=tuple(request.protected_columns),
                compare_to=request.compare_to or DEFAULT_COMPARE_TO,
                task=request.task,
                positive_class=request.positive_class,
            ),
            request.request_id,
        )
        return cv.operation_to_proto(op)

    def GetEvaluation(
        self, request: evaluation_pb2.GetEvaluationRequest, context: grpc.ServicerContext
    ) -> evaluation_pb2.Evaluation:
        return gcv.evaluation_to_proto(self.evaluations.get(request.name))

    def ListEvaluations(
        self, request: evaluation_pb2.ListEvaluationsRequest, context: grpc.ServicerContext
    ) -> evaluation_pb2.ListEvaluationsResponse:
        items, token = self.evaluations.list_evaluations(
            request.parent, request.page_size, request.page_token
        )
        return evaluation_pb2.ListEvaluationsResponse(
            evaluations=[gcv.evaluation_to_proto(e) for e in items], next_page_token=token
        )
