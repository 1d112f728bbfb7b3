"""Every registry RPC through a real server, with the SDK."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelplane import AlreadyExists, Client, FailedPrecondition, NotFound
from modelplane.profiles import BaselineProfile
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def test_model_crud(client: Client) -> None:
    name = unique()
    created = client.create_model(name, description="fraud scores", labels={"team": "risk"})
    assert created.name == f"models/{name}"
    assert created.created_by == "alice"
    assert created.etag
    got = client.get_model(name)
    assert got == created
    updated = client.update_model(name, etag=got.etag, description="v2", intended_use="triage")
    assert (updated.description, updated.intended_use, updated.labels["team"]) == (
        "v2",
        "triage",
        "risk",
    )
    assert updated.etag != got.etag
    assert updated.update_time.ToDatetime() >= got.update_time.ToDatetime()
    client.delete_model(name, etag=updated.etag)
    with pytest.raises(NotFound) as err:
        client.get_model(name)
    assert err.value.reason == "MODEL_NOT_FOUND"


def test_list_models_filters_orders_and_paginates(client: Client) -> None:
    team = unique("t")
    names = sorted(unique() for _ in range(7))
    for i, n in enumerate(names):
        client.create_model(n, labels={"team": team, "parity": "even" if i % 2 == 0 else "odd"})
    client.create_model(unique(), labels={"team": "other"})
    got = [m.name for m in client.list_models(filter=f"labels.team={team}", page_size=3)]
    assert got == [f"models/{n}" for n in names]
    even = [m.name for m in client.list_models(filter=f"labels.team={team} labels.parity=even")]
    assert even == [f"models/{n}" for n in names[::2]]
    first = client.list_models_page(filter=f"labels.team={team}", page_size=3)
    assert len(first.models) == 3 and first.next_page_token
    newest = [
        m.name
        for m in client.list_models(filter=f"labels.team={team}", order_by="create_time desc")
    ]
    assert newest == [f"models/{n}" for n in names][::-1]


def test_register_version_records_lineage_signature_and_baseline(
    client: Client, trained_model: TrainedModel, tmp_path: Path
) -> None:
    name = unique()
    client.create_model(name)
    v = client.register_version(
        name,
        trained_model.onnx,
        datasets={"train": trained_model.train, "holdout": trained_model.holdout},
        label="target",
        params={"C": "1.0", "max_iter": "5000"},
        metrics={"train_accuracy": 0.97},
        code_repo="https://git.example/ml/fraud",
        code_commit="0123abcd",
        training_run_id="run-42",
    )
    assert v.name == f"models/{name}/versions/1" and v.version == 1
    onnx_bytes = trained_model.onnx.read_bytes()
    assert v.artifact.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert v.artifact.size_bytes == len(onnx_bytes)
    assert [(t.name, t.datatype, list(t.shape)) for t in v.signature.inputs] == [
        ("X", "FP32", [-1, 30])
    ]
    assert {t.name for t in v.signature.outputs} == {"label", "probabilities"}
    assert list(v.feature_names) == trained_model.feature_names
    lin = v.lineage
    assert lin.training_run_id == "run-42"
    assert dict(lin.parameters) == {"C": "1.0", "max_iter": "5000"}
    assert lin.metrics["train_accuracy"] == pytest.approx(0.97)
    assert (lin.code.repository, lin.code.commit) == ("https://git.example/ml/fraud", "0123abcd")
    assert lin.environment.python_version.count(".") == 2
    assert any(p.name.lower() == "numpy" for p in lin.environment.packages)
    roles = {d.role: d for d in lin.datasets}
    import pyarrow.parquet as pq

    train_table = pq.read_table(trained_model.train)
    assert roles["train"].row_count == train_table.num_rows
    assert roles["train"].sha256 == hashlib.sha256(trained_model.train.read_bytes()).hexdigest()
    assert roles["train"].format == "parquet" and roles["holdout"].format == "csv"
    assert roles["train"].source == str(trained_model.train)
    assert [c.name for c in roles["train"].schema] == train_table.column_names
    # The baseline profile is a blob computed by the server from the train data.
    assert v.baseline.feature_count == 30 and v.baseline.row_count == train_table.num_rows
    out = client.download_blob(v.baseline.sha256, tmp_path / "profile.json")
    profile = BaselineProfile.from_bytes(out.read_bytes())
    first = train_table.column(trained_model.feature_names[0]).to_numpy()
    assert profile.row_count == train_table.num_rows
    feature = profile.features[0]
    assert feature.name == trained_model.feature_names[0]
    assert int(feature.bin_counts.sum()) == len(first) == feature.count
    assert feature.max == pytest.approx(float(np.max(first)))
    # Download the artifact back, byte for byte.
    path = client.download_version(name, 1, tmp_path / "back.onnx")
    assert path.read_bytes() == onnx_bytes


def test_versions_are_monotonic_listed_updated_and_archived(
    client: Client, trained_model: TrainedModel
) -> None:
    name = unique()
    client.create_model(name)
    for _ in range(3):
        client.register_version(name, trained_model.onnx, capture_env=False)
    assert [v.version for v in client.list_versions(name)] == [3, 2, 1]
    assert [v.version for v in client.list_versions(name, order_by="version", page_size=2)] == [
        1,
        2,
        3,
    ]
    v2 = client.get_version(name, 2)
    updated = client.update_version(
        name, 2, etag=v2.etag, description="better", labels={"stage": "beta"}
    )
    assert updated.description == "better" and dict(updated.labels) == {"stage": "beta"}
    assert [v.version for v in client.list_versions(name, filter="labels.stage=beta")] == [2]
    archived = client.archive_version(name, 3)
    assert archived.state == 4  # VERSION_STATE_ARCHIVED
    assert [v.version for v in client.list_versions(name, filter="state=ARCHIVED")] == [3]
    # Numbers are never reused, even after a forced delete and re-create.
    client.delete_model(name, force=True)
    client.create_model(name)
    assert client.register_version(name, trained_model.onnx, capture_env=False).version == 1


def test_aliases_with_history_and_as_of(client: Client, trained_model: TrainedModel) -> None:
    name = unique()
    client.create_model(name)
    for _ in range(2):
        client.register_version(name, trained_model.onnx, capture_env=False)
    a1 = client.set_alias(name, "champion", 1, reason="first release")
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    client.set_alias(name, "champion", 2, reason="better auc")
    assert client.get_version(name, "@champion").version == 2
    assert client.get_version(name, 2).aliases == ["champion"]
    assert client.get_alias(name, "champion", as_of=between).version == a1.version
    with pytest.raises(FailedPrecondition) as err:
        client.archive_version(name, 2)
    assert err.value.reason == "VERSION_HAS_ALIASES"
    client.delete_alias(name, "champion", reason="retired")
    events = list(client.alias_history(name, "champion"))
    assert [(e.version, e.previous_version, e.reason, e.actor) for e in events] == [
        ("", f"models/{name}/versions/2", "retired", "alice"),
        (f"models/{name}/versions/2", f"models/{name}/versions/1", "better auc", "alice"),
        (f"models/{name}/versions/1", "", "first release", "alice"),
    ]
    assert len(list(client.alias_history(name, page_size=1))) == 3
    with pytest.raises(NotFound):
        client.get_version(name, "@champion")
    assert client.list_aliases(name) == []


def test_delete_model_with_versions_needs_force(
    client: Client, trained_model: TrainedModel
) -> None:
    name = unique()
    client.create_model(name)
    client.register_version(name, trained_model.onnx, capture_env=False)
    with pytest.raises(FailedPrecondition) as err:
        client.delete_model(name)
    assert err.value.reason == "MODEL_HAS_VERSIONS"
    client.delete_model(name, force=True)
    with pytest.raises(NotFound):
        client.get_model(name)


def test_request_id_makes_mutations_idempotent(client: Client, trained_model: TrainedModel) -> None:
    name = unique()
    rid = "0b7f6c1e-6a4e-4d0b-9a43-2f3e9d6a1c55"
    first = client.create_model(name, request_id=rid)
    again = client.create_model(name, request_id=rid)
    assert again == first
    rid2 = "5d1c6f2a-0000-4000-8000-000000000002"
    v1 = client.register_version(name, trained_model.onnx, capture_env=False, request_id=rid2)
    v1_again = client.register_version(name, trained_model.onnx, capture_env=False, request_id=rid2)
    assert v1_again == v1
    assert [v.version for v in client.list_versions(name)] == [1]
    with pytest.raises(AlreadyExists):
        client.create_model(name)


def test_blob_upload_dedupes_and_downloads(client: Client, tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    blob = client.upload_blob(data, media_type="application/octet-stream")
    assert blob.sha256 == hashlib.sha256(data).hexdigest() and blob.size_bytes == len(data)
    assert client.upload_blob(data).create_time == blob.create_time
    assert client.get_blob(blob.sha256) == blob
    assert client.download_blob(blob.sha256, tmp_path / "x").read_bytes() == data


def test_blob_uploads_from_files_and_in_any_message_layout(
    client: Client,
    controlplane: RunningControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import modelplane._client as sdk
    from modelplane.v1 import blobs_pb2, blobs_pb2_grpc

    rng = np.random.default_rng(1)
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(rng.bytes(1000))
    large.write_bytes(rng.bytes(2 * 1024 * 1024 + 5))
    # A file read whole, then one streamed from disk in chunks.
    assert client.upload_blob(small).sha256 == hashlib.sha256(small.read_bytes()).hexdigest()
    monkeypatch.setattr(sdk, "READ_WHOLE_BYTES", 1024)
    blob = client.upload_blob(large)
    assert blob.size_bytes == large.stat().st_size
    assert client.download_blob(blob.sha256, tmp_path / "back").read_bytes() == large.read_bytes()
    # The header alone first, the bytes in later messages (and an empty chunk) is accepted too.
    data = rng.bytes(5000)
    sha = hashlib.sha256(data).hexdigest()
    header = blobs_pb2.UploadBlobHeader(sha256=sha, size_bytes=len(data))
    messages = [
        blobs_pb2.UploadBlobRequest(header=header),
        blobs_pb2.UploadBlobRequest(chunk=data[:10]),
        blobs_pb2.UploadBlobRequest(chunk=b""),
        blobs_pb2.UploadBlobRequest(chunk=data[10:]),
    ]
    with grpc.insecure_channel(controlplane.address) as channel:
        stub = blobs_pb2_grpc.BlobServiceStub(channel)
        got = stub.UploadBlob(iter(messages), metadata=[("x-modelplane-principal", "alice")])
    assert got.sha256 == sha and got.size_bytes == len(data)
    assert client.download_blob(sha, tmp_path / "d").read_bytes() == data


def test_operations_are_persisted_and_listed(controlplane: RunningControlPlane) -> None:
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.server import RequestContext

    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        ctx = RequestContext(principal="bob")
        op = ops.start(ctx, "evaluation", "models/x/versions/1", {"rows": 10})
        ops.progress(ctx, op.id, 0.5, "scoring")
        with controlplane.client() as c:
            got = c.get_operation(op.name)
            assert (got.done, got.progress, got.progress_message, got.created_by) == (
                False,
                0.5,
                "scoring",
                "bob",
            )
            ops.finish(
                ctx, op.id, result_type="type.googleapis.com/google.protobuf.Empty", result=b""
            )
            done = c.get_operation(op.name)
            assert done.done and done.progress == 1.0
            listed = c.list_operations(target="models/x/versions/1")
            assert [o.name for o in listed.operations] == [op.name]
            assert json.loads(json.dumps(dict(got.metadata)))["rows"] == 10
    finally:
        store.close()


def test_every_registry_mutation_is_audited(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    from controlplane import audit
    from controlplane.store import Store

    name = unique()
    with controlplane.client(principal="dana") as c:
        c.create_model(name)
        c.register_version(name, trained_model.onnx, capture_env=False)
        c.set_alias(name, "champion", 1, reason="go")
    store = Store.open(controlplane.db_url)
    try:
        events, _ = audit.list_events(store, resource=f"models/{name}")
        assert [(e.action, e.actor) for e in events] == [
            ("CreateModel", "dana"),
            ("CreateModelVersion", "dana"),
            ("SetAlias", "dana"),
        ]
        assert audit.verify(store).ok
    finally:
        store.close()
