"""Updates without an update_mask (AIP-134): the fields the request sets are updated, those it
leaves at their defaults are kept, and a request that sets nothing is refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelplane import Client
from modelplane.errors import error_info
from modelplane.testing.onnx_models import mlp
from modelplane.v1 import registry_pb2 as r
from modelplane.v1 import registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


@dataclass
class Registered:
    client: Client
    stub: registry_pb2_grpc.RegistryServiceStub
    model: str
    version: str


@pytest.fixture
def registered(controlplane: RunningControlPlane, client: Client) -> Iterator[Registered]:
    model = unique()
    client.create_model(model, description="old", labels={"team": "risk"}, intended_use="scoring")
    artifact = client.upload_blob(mlp(4, (8,), 2).SerializeToString()).sha256
    channel = grpc.insecure_channel(controlplane.address)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    stub.CreateModelVersion(
        r.CreateModelVersionRequest(
            parent=f"models/{model}",
            artifact_sha256=artifact,
            description="old",
            labels={"stage": "beta"},
        ),
        timeout=30,
    )
    yield Registered(client, stub, f"models/{model}", f"models/{model}/versions/1")
    channel.close()


def _refused(call: object, request: object) -> tuple[str, dict[str, str], str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info = error_info(err.value)
    assert info is not None
    return info.reason, dict(info.metadata), err.value.details()


def test_version_update_without_mask_sets_the_fields_given(registered: Registered) -> None:
    stub, name = registered.stub, registered.version
    got = stub.UpdateModelVersion(
        r.UpdateModelVersionRequest(version=r.ModelVersion(name=name, description="new")),
        timeout=30,
    )
    assert (got.description, dict(got.labels)) == ("new", {"stage": "beta"})

    got = stub.UpdateModelVersion(
        r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=name, labels={"stage": "ga"}, etag=got.etag)
        ),
        timeout=30,
    )
    assert (got.description, dict(got.labels)) == ("new", {"stage": "ga"})

    # A present but empty mask is no mask either.
    got = stub.UpdateModelVersion(
        r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=name, description="both", labels={"a": "b"}),
            update_mask=field_mask_pb2.FieldMask(),
        ),
        timeout=30,
    )
    assert (got.description, dict(got.labels)) == ("both", {"a": "b"})

    # Clearing a field takes a mask naming it.
    got = stub.UpdateModelVersion(
        r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=name),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        ),
        timeout=30,
    )
    assert (got.description, dict(got.labels)) == ("both", {})


def test_version_update_with_nothing_to_update_is_refused(registered: Registered) -> None:
    reason, metadata, message = _refused(
        registered.stub.UpdateModelVersion,
        r.UpdateModelVersionRequest(version=r.ModelVersion(name=registered.version)),
    )
    assert reason == "INVALID_UPDATE_MASK" and metadata == {"field": "update_mask"}
    assert "nothing to update" in message
    # A stale etag is no field to update: still nothing.
    reason, _, message = _refused(
        registered.stub.UpdateModelVersion,
        r.UpdateModelVersionRequest(version=r.ModelVersion(name=registered.version, etag="x")),
    )
    assert reason == "INVALID_UPDATE_MASK" and "nothing to update" in message
    got = registered.client.get_version(registered.model, 1)
    assert (got.description, dict(got.labels)) == ("old", {"stage": "beta"})


def test_version_update_without_mask_checks_what_it_sets(registered: Registered) -> None:
    reason, metadata, _ = _refused(
        registered.stub.UpdateModelVersion,
        r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=registered.version, description="ok", labels={"B": "x"})
        ),
    )
    assert (reason, metadata) == ("INVALID_LABELS", {"field": "version.labels"})
    assert registered.client.get_version(registered.model, 1).description == "old"


def test_model_update_without_mask_sets_the_fields_given(registered: Registered) -> None:
    got = registered.stub.UpdateModel(
        r.UpdateModelRequest(model=r.Model(name=registered.model, limitations="small data")),
        timeout=30,
    )
    assert (got.description, got.intended_use, got.limitations, dict(got.labels)) == (
        "old",
        "scoring",
        "small data",
        {"team": "risk"},
    )
    reason, _, message = _refused(
        registered.stub.UpdateModel, r.UpdateModelRequest(model=r.Model(name=registered.model))
    )
    assert reason == "INVALID_UPDATE_MASK" and "nothing to update" in message
