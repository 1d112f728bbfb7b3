"""OperationsService over gRPC."""

from __future__ import annotations

import threading

import grpc

from controlplane.api import converters as cv
from controlplane.services import OperationService
from controlplane.services.operations import POLL_SECONDS
from modelplane.server import current_context
from modelplane.v1 import operations_pb2, operations_pb2_grpc

#: How much sooner than the call's deadline a wait ends: a wait can overrun its end by one
#: poll's sleep, and then reads the operation once more and sends it.
WAIT_MARGIN_SECONDS = POLL_SECONDS + 0.3


class OperationsServicer(operations_pb2_grpc.OperationsServiceServicer):
    """Thin adapter from OperationsService RPCs to :class:`OperationService`."""

    def __init__(self, operations: OperationService, max_waits: int = 4) -> None:
        self.operations = operations
        #: Waits held at once: each holds a request thread for up to a minute, so without a
        #: bound enough waiting callers would leave no thread for anything else (health
        #: checks included). Past it a wait answers at once with the operation as it is, as
        #: AIP-151 allows; clients wait a moment and ask again.
        self._waits = threading.BoundedSemaphore(max_waits)

    def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        return cv.operation_to_proto(self.operations.get(request.name))

    def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: grpc.ServicerContext
    ) -> operations_pb2.ListOperationsResponse:
        ops, token = self.operations.list_operations(
            request.target, request.page_size, request.page_token
        )
        return operations_pb2.ListOperationsResponse(
            operations=[cv.operation_to_proto(o) for o in ops], next_page_token=token
        )

    def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        timeout = cv.seconds_of(request.timeout, "timeout") if request.HasField("timeout") else 10.0
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining - WAIT_MARGIN_SECONDS, 0.0))
        self._admit(request.name)
        if not self._waits.acquire(blocking=False):
            return cv.operation_to_proto(self.operations.get(request.name))
        try:
            return cv.operation_to_proto(self.operations.wait(request.name, timeout))
        finally:
            self._waits.release()

    def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        self._admit(request.name)
        return cv.operation_to_proto(self.operations.cancel(current_context(), request.name))

    def _admit(self, name: str) -> None:
        """Refuses, before anything waits or changes, an operation outside the caller's
        scope (the same check the answer passes through afterwards)."""
        check = current_context().resource_check
        if check is not None:
            check(cv.operation_to_proto(self.operations.get(name)))
