"""Errors whose text would outgrow what a gRPC client accepts in metadata.

Our servers cut a message and its metadata values (``to_status``), so such an error reaches
the caller with its own code and reason. A status from elsewhere that does outgrow the limit
reaches the caller as RESOURCE_EXHAUSTED with that status still attached: the SDK raises a
ModelplaneError for it (not a ValueError from unpacking the mismatched status), and the CLI
reports it on one line with the exit code of a refused request, not that of a bug."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from modelplane import Client
from modelplane.cli import main
from modelplane.errors import (
    MAX_MESSAGE_BYTES,
    InvalidArgument,
    ModelplaneError,
    error_info,
    to_grpc_status,
)
from modelplane.v1 import registry_pb2

LONG = InvalidArgument(
    "order_by " + "é" * 12_000 + " is invalid",
    reason="INVALID_ORDER_BY",
    metadata={"order_by": "x" * 12_000},
)


def _overflowing(request: registry_pb2.ListModelsRequest, context: grpc.ServicerContext) -> None:
    # Built by hand: to_status would cut it to fit.
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0])
    status.message = LONG.message
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=LONG.reason))
    context.abort_with_status(rpc_status.to_status(status))


#: Errors whose text outgrows the metadata clients take unless cut; gRPC refuses a status past
#: 8 KiB at random (surely past 16 KiB), so each is sent many times.
LONG_ERRORS = {
    "ascii": InvalidArgument("x" * 20_000, reason="R"),
    "accents": LONG,
    "cjk": InvalidArgument("模型" * 6_000, reason="R", metadata={"f": "字" * 1_000}),
    "metadata": InvalidArgument(
        "bad", reason="R", metadata={f"key{i}-" + "é" * 40: "é" * 200 for i in range(64)}
    ),
}


def _long(request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> None:
    context.abort_with_status(to_grpc_status(LONG_ERRORS[request.name.removeprefix("models/")]))


@pytest.fixture
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=request.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        for method, handler, request in (
            ("ListModels", _overflowing, registry_pb2.ListModelsRequest),
            ("GetModel", _long, registry_pb2.GetModelRequest),
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


def test_a_long_error_of_our_servers_is_cut_and_keeps_its_code_and_reason(address: str) -> None:
    with Client(address, timeout=10, retries=1) as c:
        for name, sent in LONG_ERRORS.items():
            for _ in range(100):
                with pytest.raises(grpc.RpcError) as raw:
                    c.registry.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
                assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            info = error_info(raw.value)
            assert info is not None and info.reason == sent.reason, name
            got = raw.value.details() or ""
            assert got.endswith("...") or got == sent.message, name
            assert len(got.encode("utf-8")) <= MAX_MESSAGE_BYTES, name
        with pytest.raises(InvalidArgument) as err:
            c.get_model("accents")
    assert err.value.reason == "INVALID_ORDER_BY"
    assert err.value.message.startswith("order_by éé") and err.value.message.endswith("...")
    value = err.value.metadata["order_by"]
    assert value.startswith("xxx") and value.endswith("...") and len(value) <= 256
