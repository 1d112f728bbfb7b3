"""Every INVALID_ARGUMENT of the registry names the request field at fault in its ErrorInfo
metadata (``field``), as an AIP-193 path of the request: ``filter``, ``model.labels``,
``datasets.role`` (``index`` then says which dataset)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelplane.errors import error_info
from modelplane.testing.onnx_models import mlp
from modelplane.v1 import registry_pb2 as r
from modelplane.v1 import registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


@dataclass
class Registry:
    stub: registry_pb2_grpc.RegistryServiceStub
    model: str
    artifact: str


@pytest.fixture
def registry(controlplane: RunningControlPlane) -> Iterator[Registry]:
    with controlplane.client() as c:
        model = unique()
        c.create_model(model)
        artifact = c.upload_blob(mlp(4, (8,), 2).SerializeToString()).sha256
    channel = grpc.insecure_channel(controlplane.address)
    yield Registry(registry_pb2_grpc.RegistryServiceStub(channel), f"models/{model}", artifact)
    channel.close()


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _version(reg: Registry, **fields: Any) -> r.CreateModelVersionRequest:
    given = {"parent": reg.model, "artifact_sha256": reg.artifact, **fields}
    return r.CreateModelVersionRequest(**given)


def _datasets(reg: Registry, *given: tuple[str, str]) -> list[r.DatasetInput]:
    return [r.DatasetInput(role=role, sha256=sha or reg.artifact) for role, sha in given]


#: (field, method, request builder); each request is refused for that field alone.
Case = tuple[str, str, Callable[[Registry], Any]]
CASES: list[Case] = [
    ("filter", "ListModels", lambda g: r.ListModelsRequest(filter="bogus")),
    ("filter", "ListModels", lambda g: r.ListModelsRequest(filter="labels.Bad=x")),
    ("filter", "ListModels", lambda g: r.ListModelsRequest(filter='labels.a="x')),
    ("filter", "ListModels", lambda g: r.ListModelsRequest(filter="owner=x")),
    (
        "filter",
        "ListModelVersions",
        lambda g: r.ListModelVersionsRequest(parent=g.model, filter="state=APPROVED"),
    ),
    ("order_by", "ListModels", lambda g: r.ListModelsRequest(order_by="bogus")),
    ("order_by", "ListModels", lambda g: r.ListModelsRequest(order_by="name sideways")),
    ("page_size", "ListModels", lambda g: r.ListModelsRequest(page_size=-1)),
    (
        "page_token",
        "ListModels",
        lambda g: r.ListModelsRequest(page_token="bogus"),
    ),
    (
        "update_mask",
        "UpdateModel",
        lambda g: r.UpdateModelRequest(model=r.Model(name=g.model), update_mask=_mask("bogus")),
    ),
    (
        "update_mask",
        "UpdateModelVersion",
        lambda g: r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=f"{g.model}/versions/1"), update_mask=_mask("state")
        ),
    ),
    (
        "model.labels",
        "UpdateModel",
        lambda g: r.UpdateModelRequest(
            model=r.Model(name=g.model, labels={"Bad": "x"}), update_mask=_mask("labels")
        ),
    ),
    (
        "model.description",
        "UpdateModel",
        lambda g: r.UpdateModelRequest(
            model=r.Model(name=g.model, description="x" * 10_001),
            update_mask=_mask("description"),
        ),
    ),
    (
        "model.name",
        "UpdateModel",
        lambda g: r.UpdateModelRequest(model=r.Model(name="model/x"), update_mask=_mask("labels")),
    ),
    (
        "version.labels",
        "UpdateModelVersion",
        lambda g: r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=f"{g.model}/versions/1", labels={"Bad": "x"}),
            update_mask=_mask("labels"),
        ),
    ),
    (
        "version.description",
        "UpdateModelVersion",
        lambda g: r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=f"{g.model}/versions/1", description="a\x00b"),
            update_mask=_mask("description"),
        ),
    ),
    (
        "version.name",
        "UpdateModelVersion",
        lambda g: r.UpdateModelVersionRequest(
            version=r.ModelVersion(name=f"{g.model}/versions/0", description="d")
        ),
    ),
    ("model_id", "CreateModel", lambda g: r.CreateModelRequest(model_id="Bad")),
    (
        "request_id",
        "CreateModel",
        lambda g: r.CreateModelRequest(model_id=unique(), request_id="not a uuid"),
    ),
    ("name", "GetModel", lambda g: r.GetModelRequest(name="models/Bad")),
    ("name", "GetModel", lambda g: r.GetModelRequest(name="")),
    ("name", "GetModelVersion", lambda g: r.GetModelVersionRequest(name=f"{g.model}@Champ")),
    (
        "name",
        "SetAlias",
        lambda g: r.SetAliasRequest(
            name=f"{g.model}/aliases/Champ", version=f"{g.model}/versions/1"
        ),
    ),
    (
        "version",
        "SetAlias",
        lambda g: r.SetAliasRequest(name=f"{g.model}/aliases/c", version="models/other/versions/1"),
    ),
    ("parent", "CreateModelVersion", lambda g: _version(g, parent="models/x/versions/1")),
    ("parent", "ListModelVersions", lambda g: r.ListModelVersionsRequest(parent="models")),
    ("artifact_sha256", "CreateModelVersion", lambda g: _version(g, artifact_sha256="x")),
    ("labels", "CreateModelVersion", lambda g: _version(g, labels={"Bad": "x"})),
    ("description", "CreateModelVersion", lambda g: _version(g, description="x" * 10_001)),
    ("label_column", "CreateModelVersion", lambda g: _version(g, label_column="a\nb")),
    ("training_run_id", "CreateModelVersion", lambda g: _version(g, training_run_id="r" * 257)),
    ("code.commit", "CreateModelVersion", lambda g: _version(g, code=r.CodeRef(commit="a\nb"))),
    ("parameters", "CreateModelVersion", lambda g: _version(g, parameters={"": "x"})),
    ("parameters", "CreateModelVersion", lambda g: _version(g, parameters={"a\nb": "x"})),
    ("parameters", "CreateModelVersion", lambda g: _version(g, parameters={"p" * 257: "x"})),
    ("parameters", "CreateModelVersion", lambda g: _version(g, parameters={"a": "\x1b[2J"})),
    ("metrics", "CreateModelVersion", lambda g: _version(g, metrics={"m": float("inf")})),
    ("metrics", "CreateModelVersion", lambda g: _version(g, metrics={"": 1.0})),
    ("metrics", "CreateModelVersion", lambda g: _version(g, metrics={"a\tb": 1.0})),
    (
        "feature_names",
        "CreateModelVersion",
        lambda g: _version(g, feature_names=["a", "a", "b", "c"]),
    ),
    ("feature_names", "CreateModelVersion", lambda g: _version(g, feature_names=["a", ""])),
    ("feature_names", "CreateModelVersion", lambda g: _version(g, feature_names=["a\nb"])),
    (
        "datasets.role",
        "CreateModelVersion",
        lambda g: _version(g, datasets=_datasets(g, ("train", ""), ("train", ""))),
    ),
    (
        "datasets.role",
        "CreateModelVersion",
        lambda g: _version(g, datasets=_datasets(g, ("Train", ""))),
    ),
    (
        "datasets.sha256",
        "CreateModelVersion",
        lambda g: _version(g, datasets=_datasets(g, ("train", "x"))),
    ),
    (
        "datasets.source",
        "CreateModelVersion",
        lambda g: _version(g, datasets=[r.DatasetInput(role="t", source="a\nb", sha256="0" * 64)]),
    ),
]


@pytest.mark.parametrize(("field", "method", "build"), CASES)
def test_invalid_argument_names_the_request_field(
    registry: Registry, field: str, method: str, build: Callable[[Registry], Any]
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(registry.stub, method)(build(registry), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info = error_info(err.value)
    assert info is not None
    assert info.metadata.get("field") == field, (info.reason, err.value.details())


def test_parameter_names_are_refused_alike(registry: Registry) -> None:
    """An empty name and one over two lines are refused with one reason, naming the name."""
    reasons = []
    for name in ("", "a\nb"):
        with pytest.raises(grpc.RpcError) as err:
            registry.stub.CreateModelVersion(_version(registry, parameters={name: "x"}), timeout=30)
        info = error_info(err.value)
        assert info is not None
        reasons.append(info.reason)
    assert reasons == ["INVALID_PARAMETER", "INVALID_PARAMETER"]
    assert "parameter name 'a\\nb'" in err.value.details()


def test_a_refused_dataset_is_named_by_its_index(registry: Registry) -> None:
    request = _version(registry, datasets=_datasets(registry, ("train", ""), ("Test", "")))
    with pytest.raises(grpc.RpcError) as err:
        registry.stub.CreateModelVersion(request, timeout=30)
    info = error_info(err.value)
    assert info is not None
    assert dict(info.metadata) == {"field": "datasets.role", "index": "1"}
