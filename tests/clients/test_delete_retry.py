"""A DeleteDeployment that a real control plane applied but whose answer was lost: the SDK's
retry carries the first try's request id, so it answers what the first did (deleted) rather
than NOT_FOUND. The answer is lost by a small gRPC relay in front of the control plane."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from modelplane import Client
from modelplane.errors import NotFound
from modelplane.v1 import deployments_pb2, deployments_pb2_grpc
from tests.clients.conftest import LiveControlPlane
from tests.controlplane.test_deployments_api import deployed


def test_a_retried_delete_that_was_applied_answers_deleted(
    live_controlplane: LiveControlPlane, tmp_path: Path
) -> None:
    upstream = grpc.insecure_channel(live_controlplane.address)
    real = deployments_pb2_grpc.DeploymentServiceStub(upstream)
    sent: list[str] = []

    def delete(
        request: deployments_pb2.DeleteDeploymentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        sent.append(request.request_id)
        answer = real.DeleteDeployment(request, timeout=10)
        if len(sent) == 1:  # applied, but the caller never hears so
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return answer

    relay = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(
        delete,
        request_deserializer=deployments_pb2.DeleteDeploymentRequest.FromString,
        response_serializer=empty_pb2.Empty.SerializeToString,
    )
    relay.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "modelplane.v1.DeploymentService", {"DeleteDeployment": handler}
            ),
        )
    )
    port = relay.add_insecure_port("127.0.0.1:0")
    relay.start()
    try:
        with Client(live_controlplane.address, timeout=10) as c:
            dep, _ = deployed(c, tmp_path)
            etag = c.get_deployment(dep).etag
        with Client(f"127.0.0.1:{port}", timeout=10, retries=3) as c:
            c.delete_deployment(dep, etag=etag)
    finally:
        relay.stop(0)
        upstream.close()
    assert len(sent) == 2 and sent[0] and sent[0] == sent[1]
    with Client(live_controlplane.address, timeout=10) as c:
        with pytest.raises(NotFound):
            c.get_deployment(dep)
        actions = [e.action for e in c.audit_events(resource=f"deployments/{dep}")]
        assert actions.count("DeleteDeployment") == 1
