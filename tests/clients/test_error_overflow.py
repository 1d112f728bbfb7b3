"""A server error whose status outgrows what a gRPC client accepts in metadata reaches the
caller as RESOURCE_EXHAUSTED with the server's own status still attached: the SDK raises a
ModelplaneError for it (not a ValueError from unpacking the mismatched status), and the CLI
reports it on one line with the exit code of a refused request, not that of a bug."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from modelplane import Client
from modelplane.cli import main
from modelplane.errors import InvalidArgument, ModelplaneError, error_info, to_grpc_status
from modelplane.v1 import registry_pb2


def _overflowing(request: registry_pb2.ListModelsRequest, context: grpc.ServicerContext) -> None:
    error = InvalidArgument("order_by " + "x" * 12_000 + " is invalid", reason="INVALID_ORDER_BY")
    context.abort_with_status(to_grpc_status(error))


@pytest.fixture
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handlers = {
        "ListModels": grpc.unary_unary_rpc_method_handler(
            _overflowing,
            request_deserializer=registry_pb2.ListModelsRequest.FromString,
            response_serializer=registry_pb2.ListModelsResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("modelplane.v1.RegistryService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_an_overflowing_status_is_a_modelplane_error(address: str) -> None:
    with Client(address, timeout=10, retries=1) as c:
        with pytest.raises(grpc.RpcError) as raw:
            c.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(raw.value) is None
        with pytest.raises(ModelplaneError) as err:
            list(c.list_models())
    assert err.value.reason == "RESOURCE_EXHAUSTED"


def test_the_cli_reports_an_overflowing_status_on_one_line(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--server", address, "models", "list"])
    out, err = capsys.readouterr()
    assert code not in (0, 70) and out == ""
    assert err.startswith("error: RESOURCE_EXHAUSTED") and err.count("\n") == 1
    assert "Traceback" not in err and "ValueError" not in err
