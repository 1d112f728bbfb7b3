"""What a registration refuses before the server spends memory or reads its own files on it:
a dataset larger than the registration limits (read from its metadata, before it is decoded),
more datasets, parameters or metrics than a version records, and an ONNX artifact whose
tensors keep their data in external files or that no runtime can load (an IR version or opset
newer than onnx knows). Datasets are read one at a time; large versions come fewer to a page."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from controlplane.artifacts import inspect_onnx
from controlplane.names import shown
from controlplane.services.versions import (
    MAX_DATASETS,
    MAX_METRICS,
    MAX_PARAMETERS,
)
from modelplane import Client
from modelplane.errors import InvalidArgument, ResourceExhausted, error_info
from modelplane.testing.onnx_models import mlp
from modelplane.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane


def _add_model(external: TensorProto | None = None) -> bytes:
    """y = x + W over two features; ``external`` replaces the initializer W when given."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    w = external or helper.make_tensor("W", TensorProto.FLOAT, [2], [1.0, 1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _parquet(rows: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": np.zeros(rows), "b": np.zeros(rows)}), sink)
    return sink.getvalue()


def _csv(rows: int = 5) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(pa.table({"a": np.arange(rows, dtype=float), "b": np.ones(rows)}), sink)
    return sink.getvalue()


@pytest.fixture
def limited(tmp_path: Path, db_url: str) -> Iterator[RunningControlPlane]:
    """A control plane on each backend whose registrations take datasets of at most 1,000 rows
    and 1,500 cells."""
    cp = start_controlplane(
        tmp_path, db_url, registration_max_rows=1000, registration_max_cells=1500
    )
    yield cp
    cp.handle.stop(0)


def _register(c: Client, tmp: Path, model_id: str, datasets: dict[str, bytes]) -> int:
    (tmp / "model.onnx").write_bytes(_add_model())
    paths = {}
    for role, data in datasets.items():
        paths[role] = tmp / f"{role}.data"
        paths[role].write_bytes(data)
    version = c.register_version(model_id, tmp / "model.onnx", datasets=paths, capture_env=False)
    return int(version.version)


@pytest.mark.parametrize(
    ("data", "setting", "limit"),
    [
        (_parquet(1001), "registration_max_rows", "1,000 rows"),
        (_csv(800), "registration_max_cells", "1,500 cells"),
    ],
    ids=["rows", "cells"],
)
def test_a_dataset_over_the_registration_limits_is_refused(
    limited: RunningControlPlane, tmp_path: Path, data: bytes, setting: str, limit: str
) -> None:
    model_id = unique()
    with limited.client() as c:
        c.create_model(model_id)
        with pytest.raises(ResourceExhausted) as err:
            _register(c, tmp_path, model_id, {"train": _csv(), "holdout": data})
        assert list(c.list_versions(model_id)) == []
        # Datasets within the limits are registered.
        assert _register(c, tmp_path, model_id, {"train": _csv(), "holdout": _parquet(750)}) == 1
    assert err.value.reason == "DATASET_TOO_LARGE"
    assert "dataset 'holdout'" in err.value.message
    assert f"MODELPLANE_{setting.upper()}" in err.value.message and limit in err.value.message
    assert err.value.metadata["setting"] == setting
    assert err.value.metadata["role"] == "holdout"


def test_the_size_is_checked_before_the_dataset_is_decoded(
    limited: RunningControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelplane import profiles

    decoded: list[int] = []
    read_table = profiles.read_table

    def counting(data: bytes, **kw: bool) -> pa.Table:
        decoded.append(len(data))
        return read_table(data, **kw)

    monkeypatch.setattr(profiles, "read_table", counting)
    big = _parquet(100_000)
    model_id = unique()
    with limited.client() as c:
        c.create_model(model_id)
        with pytest.raises(ResourceExhausted):
            _register(c, tmp_path, model_id, {"train": big})
    assert len(big) not in decoded


def test_a_version_records_at_most_max_datasets(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    small = _csv()
    model_id = unique()
    with controlplane_any.client() as c:
        c.create_model(model_id)
        too_many = {f"r{i}": small for i in range(MAX_DATASETS + 1)}
        with pytest.raises(InvalidArgument) as err:
            _register(c, tmp_path, model_id, too_many)
        assert list(c.list_versions(model_id)) == []
        # As many as the limit, all one blob, are registered.
        at_limit = {f"r{i}": small for i in range(MAX_DATASETS)}
        version = _register(c, tmp_path, model_id, at_limit)
        lineage = c.get_version(model_id, version).lineage
    assert err.value.reason == "TOO_MANY_DATASETS"
    assert str(MAX_DATASETS) in err.value.message and err.value.metadata["field"] == "datasets"
    assert len(lineage.datasets) == MAX_DATASETS


def test_datasets_are_read_and_decoded_one_at_a_time(
    controlplane: RunningControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each dataset's bytes are decoded before the next dataset's are read, so that a
    registration holds one dataset's bytes at a time."""
    from controlplane.blobstore import BlobStore
    from modelplane import profiles

    datasets = {"validation": _csv(5), "test": _csv(6), "holdout": _csv(7)}
    sizes = {len(data) for data in datasets.values()}
    events: list[str] = []
    read_bytes, read_table = BlobStore.read_bytes, profiles.read_table

    def reading(self: BlobStore, sha256: str) -> bytes:
        data = read_bytes(self, sha256)
        if len(data) in sizes:
            events.append("read")
        return data

    def decoding(data: bytes, **kw: bool) -> pa.Table:
        if len(data) in sizes:
            events.append("decode")
        return read_table(data, **kw)

    monkeypatch.setattr(BlobStore, "read_bytes", reading)
    monkeypatch.setattr(profiles, "read_table", decoding)
    model_id = unique()
    with controlplane.client() as c:
        c.create_model(model_id)
        _register(c, tmp_path, model_id, datasets)
    assert events == ["read", "decode"] * 3


def _external(location: str) -> TensorProto:
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value="8")
    return tensor


def _with_constant(tensor: TensorProto) -> bytes:
    """y = x + C where C is a Constant node's tensor attribute."""
    model = onnx.load_from_string(_add_model())
    del model.graph.initializer[:]
    tensor.name = "W"
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=tensor))
    return model.SerializeToString()


def _in_subgraph(tensor: TensorProto) -> bytes:
    """y = If(cond) { x + W } else { x }, with W an initializer of the then-branch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [None, 2])
    then = helper.make_graph([helper.make_node("Add", ["x", "W"], ["o"])], "t", [], [out], [tensor])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "e", [], [out])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    graph = helper.make_graph([node], "g", [x, cond], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _sparse(tensor: TensorProto) -> bytes:
    model = onnx.load_from_string(_add_model())
    del model.graph.initializer[:]
    indices = helper.make_tensor("W_indices", TensorProto.INT64, [2], [0, 1])
    model.graph.sparse_initializer.add().CopyFrom(helper.make_sparse_tensor(tensor, indices, [2]))
    return model.SerializeToString()


@pytest.mark.parametrize(
    "build",
    [_add_model, _with_constant, _in_subgraph, _sparse],
    ids=["initializer", "constant", "subgraph", "sparse"],
)
def test_tensors_with_external_data_are_refused_before_the_checker(
    build: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def checker(*_: object, **__: object) -> None:
        raise AssertionError("onnx.checker ran on a model with external data")

    monkeypatch.setattr(onnx.checker, "check_model", checker)
    with pytest.raises(InvalidArgument) as err:
        inspect_onnx(build(_external("server.log")), "0" * 64)  # type: ignore[operator]
    assert err.value.reason == "INVALID_ONNX_MODEL"
    assert "external data is not supported" in err.value.message
    assert "self-contained" in err.value.message and "'server.log'" in err.value.message


def test_a_registration_naming_the_servers_files_learns_nothing_of_them(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    """An artifact whose initializer names a file the server can read (relative to its working
    directory, or absolute), or one that does not exist, gets one answer whatever the file:
    external data is refused, and no version is registered."""
    present = tmp_path / "present.bin"
    present.write_bytes(b"\x00" * 8)
    locations = [os.path.relpath(present), str(present), os.path.relpath(tmp_path / "absent.bin")]
    model_id = unique()
    answers = set()
    with controlplane_any.client() as c:
        c.create_model(model_id)
        for location in locations:
            (tmp_path / "model.onnx").write_bytes(_add_model(_external(location)))
            with pytest.raises(InvalidArgument) as err:
                c.register_version(model_id, tmp_path / "model.onnx", capture_env=False)
            # (The message names the location as the server shows caller text: bounded.)
            answers.add((err.value.reason, err.value.message.replace(shown(location), "LOCATION")))
        assert list(c.list_versions(model_id)) == []
    assert len(answers) == 1
    reason, message = answers.pop()
    assert reason == "INVALID_ONNX_MODEL" and "external data is not supported" in message


# ONNX versions newer than onnx knows ------------------------------------------------------------

_NEWEST_ML = max(
    s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == "ai.onnx.ml"
)


def _too_new(what: str) -> tuple[bytes, str]:
    """A model declaring an IR version or importing an opset newer than onnx knows, and what
    the refusal says is the newest."""
    model = mlp(4, (8,), 2)
    if what == "ir_version":
        model.ir_version = onnx.IR_VERSION + 1
        return model.SerializeToString(), f"({onnx.IR_VERSION}, onnx {onnx.__version__})"
    if what == "ai.onnx":
        model.opset_import[0].version = 999
        return model.SerializeToString(), f"({onnx.defs.onnx_opset_version()}, onnx"
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", _NEWEST_ML + 1))
    return model.SerializeToString(), f"({_NEWEST_ML}, onnx"


@pytest.mark.parametrize("what", ["ir_version", "ai.onnx", "ai.onnx.ml"])
def test_a_model_newer_than_onnx_knows_is_refused(
    controlplane: RunningControlPlane, tmp_path: Path, what: str
) -> None:
    data, newest = _too_new(what)
    with pytest.raises(InvalidArgument) as direct:
        inspect_onnx(data, "0" * 64)
    model_id = unique()
    with controlplane.client() as c:
        c.create_model(model_id)
        (tmp_path / "model.onnx").write_bytes(data)
        with pytest.raises(InvalidArgument) as err:
            c.register_version(model_id, tmp_path / "model.onnx", capture_env=False)
        assert list(c.list_versions(model_id)) == []
    for refused in (direct.value, err.value):
        assert refused.reason == "INVALID_ONNX_MODEL"
        assert refused.metadata["field"] == "artifact_sha256"
        assert newest in refused.message
    if what == "ai.onnx":
        assert "opset 999 of domain ai.onnx" in err.value.message


def test_a_model_at_the_newest_versions_onnx_knows_is_inspected() -> None:
    model = mlp(4, (8,), 2)
    model.ir_version = onnx.IR_VERSION
    model.opset_import[0].version = onnx.defs.onnx_opset_version()
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", _NEWEST_ML))
    artifact, _ = inspect_onnx(model.SerializeToString(), "0" * 64)
    assert (artifact.ir_version, artifact.opset) == (
        onnx.IR_VERSION,
        onnx.defs.onnx_opset_version(),
    )


# Parameters, metrics and pages of versions --------------------------------------------------


@pytest.fixture
def raw(
    controlplane: RunningControlPlane,
) -> Iterator[tuple[Client, registry_pb2_grpc.RegistryServiceStub]]:
    """The SDK, and a registry stub on a channel with gRPC's default 4 MiB receive limit."""
    channel = grpc.insecure_channel(controlplane.address)
    with controlplane.client() as c:
        yield c, registry_pb2_grpc.RegistryServiceStub(channel)
    channel.close()


def _refusal(call: object, request: object) -> tuple[str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=120)  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info = error_info(err.value)
    assert info is not None
    return info.reason, dict(info.metadata)


def test_parameters_and_metrics_are_capped(
    raw: tuple[Client, registry_pb2_grpc.RegistryServiceStub],
) -> None:
    c, stub = raw
    model_id = unique()
    c.create_model(model_id)
    artifact = c.upload_blob(mlp(4, (8,), 2).SerializeToString()).sha256

    def request(params: int, metrics: int) -> registry_pb2.CreateModelVersionRequest:
        return registry_pb2.CreateModelVersionRequest(
            parent=f"models/{model_id}",
            artifact_sha256=artifact,
            parameters={f"p{i}": "v" for i in range(params)},
            metrics={f"m{i}": float(i) for i in range(metrics)},
        )

    assert _refusal(stub.CreateModelVersion, request(MAX_PARAMETERS + 1, 0)) == (
        "TOO_MANY_PARAMETERS",
        {"field": "parameters", "limit": str(MAX_PARAMETERS)},
    )
    assert _refusal(stub.CreateModelVersion, request(0, MAX_METRICS + 1)) == (
        "TOO_MANY_METRICS",
        {"field": "metrics", "limit": str(MAX_METRICS)},
    )
    assert list(c.list_versions(model_id)) == []
    got = stub.CreateModelVersion(request(MAX_PARAMETERS, MAX_METRICS), timeout=60)
    assert (len(got.lineage.parameters), len(got.lineage.metrics)) == (1000, 1000)


def test_a_page_of_versions_stays_under_the_default_message_limit(
    raw: tuple[Client, registry_pb2_grpc.RegistryServiceStub],
) -> None:
    """Versions of 1.9 MB each come one to a page, each page with a token to the next, where
    three on one page would pass gRPC's default 4 MiB receive limit."""
    c, stub = raw
    model_id = unique()
    c.create_model(model_id)
    artifact = c.upload_blob(mlp(4, (8,), 2).SerializeToString()).sha256
    for _ in range(3):
        stub.CreateModelVersion(
            registry_pb2.CreateModelVersionRequest(
                parent=f"models/{model_id}",
                artifact_sha256=artifact,
                parameters={f"p{i:03d}": "x" * 10_000 for i in range(190)},
            ),
            timeout=120,
        )
    names, token = [], ""
    while True:
        page = stub.ListModelVersions(
            registry_pb2.ListModelVersionsRequest(parent=f"models/{model_id}", page_token=token),
            timeout=60,
        )
        assert page.ByteSize() < 4 * 1024**2 and len(page.versions) == 1
        names += [v.name for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"models/{model_id}/versions/{v}" for v in (3, 2, 1)]
    # Small versions still fill a page.
    for _ in range(3):
        stub.CreateModelVersion(
            registry_pb2.CreateModelVersionRequest(
                parent=f"models/{model_id}", artifact_sha256=artifact
            ),
            timeout=60,
        )
    page = stub.ListModelVersions(
        registry_pb2.ListModelVersionsRequest(parent=f"models/{model_id}", page_size=3),
        timeout=60,
    )
    assert [v.version for v in page.versions] == [6, 5, 4] and page.next_page_token
