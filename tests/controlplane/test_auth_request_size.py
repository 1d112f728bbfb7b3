"""The control plane reads at most ``max_request_bytes`` of one request message (16 MiB by
default): gRPC reads a message whole before authentication, so a larger one from anybody is
refused with RESOURCE_EXHAUSTED instead of held in memory. Uploads, which travel in 1 MiB
chunks, and registrations with sizeable lineage still go through."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelplane.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server

PEOPLE = {"ada": (["admin"], [])}
MIB = 1 << 20


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """A token server accepting requests of at most 3 MiB."""
    server = start_token_server(tmp_path_factory.mktemp("small"), PEOPLE, max_request_bytes=3 * MIB)
    yield server
    server.cp.handle.stop(0)


def _get_model(address: str, size: int, token: str = "") -> grpc.StatusCode:
    """The status of a GetModel whose request message is about ``size`` bytes."""
    options = [("grpc.max_send_message_length", 2**31 - 1)]
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address, options=options) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModel(
                registry_pb2.GetModelRequest(name="x" * size), metadata=metadata, timeout=30
            )
    return err.value.code()


def test_the_default_limit_refuses_larger_requests_before_authentication(
    tmp_path: Path,
) -> None:
    server = start_token_server(tmp_path, PEOPLE)
    try:
        assert _get_model(server.address, 17 * MIB) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _get_model(server.address, 15 * MIB) is grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.cp.handle.stop(0)


def test_a_configured_limit_holds_for_every_caller(small: TokenServer) -> None:
    token = small.tokens["ada"]
    assert _get_model(small.address, 4 * MIB) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _get_model(small.address, 4 * MIB, token) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the limit the request is read and answered on its merits.
    assert _get_model(small.address, 2 * MIB) is grpc.StatusCode.UNAUTHENTICATED
    assert _get_model(small.address, 2 * MIB, token) is grpc.StatusCode.INVALID_ARGUMENT


def test_uploads_and_registrations_fit_under_the_limit(
    small: TokenServer, trained_model: TrainedModel, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(7 * MIB + 123))
    model = unique()
    with small.client("ada") as ada:
        blob = ada.upload_blob(big)
        assert blob.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
        assert blob.size_bytes == 7 * MIB + 123
        got = ada.download_blob(blob.sha256, tmp_path / "back.bin")
        assert got.read_bytes() == big.read_bytes()
        ada.create_model(model)
        params = {f"p{i}": "v" * 10_000 for i in range(200)}  # about 2 MB of lineage
        v = ada.register_version(model, trained_model.onnx, params=params)
        assert ada.get_version(model, int(v.version)).lineage.parameters == params
