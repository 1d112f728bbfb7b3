"""Bad input through a real server: the right status code and ErrorInfo reason, nothing stored,
nothing read or written outside the artifact root, and the server keeps serving."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.errors import error_info
from modelplane.v1 import blobs_pb2, registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel

#: Strings that must never be accepted where something is named.
ATTACKS = [
    "../x",
    "..%2fx",
    "%252e%252e%252f",
    "/etc/passwd",
    "file:///etc/passwd",
    "file:x",
    "//host/x",
    "x?y=1",
    "x#frag",
    "x\x00y",
    "x y",
    " x",
    "x\n",
    "X",
    "Upper",
    "z" * 64,
    "",
    "-x",
    "x-",
    "..",
    ".",
    "x/y",
    "x\\y",
]


def _rpc_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value


def _check(err: grpc.RpcError, code: grpc.StatusCode, reason: str) -> None:
    assert err.code() == code, err.details()
    info = error_info(err)
    assert info is not None, "every error carries an ErrorInfo"
    assert info.reason == reason, (info.reason, err.details())
    assert info.domain == "modelplane.dev"
    assert err.details() and "Traceback" not in err.details()


@pytest.fixture
def stub(controlplane: RunningControlPlane):  # type: ignore[no-untyped-def]
    from modelplane.v1 import registry_pb2_grpc

    channel = grpc.insecure_channel(controlplane.address)
    yield registry_pb2_grpc.RegistryServiceStub(channel)
    channel.close()


@pytest.fixture
def blob_stub(controlplane: RunningControlPlane):  # type: ignore[no-untyped-def]
    from modelplane.v1 import blobs_pb2_grpc

    channel = grpc.insecure_channel(controlplane.address)
    yield blobs_pb2_grpc.BlobServiceStub(channel)
    channel.close()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("bad", ATTACKS)
def test_path_like_names_are_refused_everywhere(
    bad: str, stub, controlplane: RunningControlPlane, tmp_path: Path, trained_model: TrainedModel
) -> None:  # type: ignore[no-untyped-def]
    good = unique()
    with controlplane.client() as c:
        c.create_model(good)
        v = c.register_version(good, trained_model.onnx, capture_env=False)
    before = _tree(controlplane.artifact_root)
    outside_before = set(os.listdir(tmp_path.parent))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (stub.CreateModel, registry_pb2.CreateModelRequest(model_id=bad)),
        (stub.GetModel, registry_pb2.GetModelRequest(name=f"models/{bad}")),
        (stub.GetModel, registry_pb2.GetModelRequest(name=bad)),
        (stub.DeleteModel, registry_pb2.DeleteModelRequest(name=f"models/{bad}")),
        (
            stub.GetModelVersion,
            registry_pb2.GetModelVersionRequest(name=f"models/{good}/versions/{bad}"),
        ),
        (stub.GetModelVersion, registry_pb2.GetModelVersionRequest(name=f"models/{good}@{bad}")),
        (stub.ListModelVersions, registry_pb2.ListModelVersionsRequest(parent=f"models/{bad}")),
        (
            stub.CreateModelVersion,
            registry_pb2.CreateModelVersionRequest(parent=f"models/{good}", artifact_sha256=bad),
        ),
        (
            stub.CreateModelVersion,
            registry_pb2.CreateModelVersionRequest(
                parent=f"models/{good}",
                artifact_sha256=v.artifact.sha256,
                datasets=[
                    registry_pb2.DatasetInput(role=bad, source="x", sha256=v.artifact.sha256)
                ],
            ),
        ),
        (
            stub.SetAlias,
            registry_pb2.SetAliasRequest(name=f"models/{good}/aliases/{bad}", version=v.name),
        ),
        (stub.GetAlias, registry_pb2.GetAliasRequest(name=f"models/{good}/aliases/{bad}")),
        (
            stub.ListAliasHistory,
            registry_pb2.ListAliasHistoryRequest(name=f"models/{good}/aliases/{bad}"),
        ),
    ]
    for call, request in cases:
        err = _rpc_error(call, request)
        assert err.code() == invalid, (request, err.details())
        info = error_info(err)
        assert info is not None and info.reason in ("INVALID_NAME", "INVALID_DIGEST"), (
            request,
            info,
        )
    with grpc.insecure_channel(controlplane.address) as ch:
        from modelplane.v1 import blobs_pb2_grpc

        blobs = blobs_pb2_grpc.BlobServiceStub(ch)
        for call, request in [
            (blobs.GetBlob, blobs_pb2.GetBlobRequest(name=f"blobs/{bad}")),
            (blobs.GetBlob, blobs_pb2.GetBlobRequest(name=bad)),
        ]:
            err = _rpc_error(call, request)
            assert err.code() == invalid
        stream = blobs.DownloadBlob(blobs_pb2.DownloadBlobRequest(name=f"blobs/{bad}"), timeout=10)
        with pytest.raises(grpc.RpcError) as derr:
            list(stream)
        assert derr.value.code() == invalid
        upload = iter([blobs_pb2.UploadBlobRequest(header=blobs_pb2.UploadBlobHeader(sha256=bad))])
        with pytest.raises(grpc.RpcError) as uerr:
            blobs.UploadBlob(upload, timeout=10)
        assert uerr.value.code() == invalid
    assert _tree(controlplane.artifact_root) - before <= {"tmp"}, "nothing new was written"
    assert set(os.listdir(tmp_path.parent)) == outside_before
    # The server still answers.
    with controlplane.client() as c:
        assert c.get_model(good).name == f"models/{good}"


def test_free_text_fields_reject_control_characters(client: Client) -> None:
    from modelplane import InvalidArgument

    with pytest.raises(InvalidArgument):
        client.create_model(unique(), description="nul\x00byte")
    with pytest.raises(InvalidArgument) as err:
        client.create_model(unique(), labels={"Bad Key": "v"})
    assert err.value.reason == "INVALID_LABELS"
    with pytest.raises(InvalidArgument) as err:
        client.create_model(unique(), labels={"k": "../../etc"})
    assert err.value.reason == "INVALID_LABELS"


def test_duplicates_missing_and_stale_etags(
    stub, client: Client, trained_model: TrainedModel
) -> None:  # type: ignore[no-untyped-def]
    name = unique()
    m = client.create_model(name)
    _check(
        _rpc_error(stub.CreateModel, registry_pb2.CreateModelRequest(model_id=name)),
        grpc.StatusCode.ALREADY_EXISTS,
        "MODEL_EXISTS",
    )
    _check(
        _rpc_error(stub.GetModel, registry_pb2.GetModelRequest(name="models/nope-nope")),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    _check(
        _rpc_error(
            stub.GetModelVersion,
            registry_pb2.GetModelVersionRequest(name=f"models/{name}/versions/9"),
        ),
        grpc.StatusCode.NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    _check(
        _rpc_error(
            stub.GetAlias, registry_pb2.GetAliasRequest(name=f"models/{name}/aliases/champion")
        ),
        grpc.StatusCode.NOT_FOUND,
        "ALIAS_NOT_FOUND",
    )
    client.update_model(name, etag=m.etag, description="first")
    stale = registry_pb2.UpdateModelRequest(
        model=registry_pb2.Model(name=f"models/{name}", etag=m.etag, description="second"),
        update_mask={"paths": ["description"]},
    )
    _check(_rpc_error(stub.UpdateModel, stale), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert client.get_model(name).description == "first"
    _check(
        _rpc_error(
            stub.DeleteModel, registry_pb2.DeleteModelRequest(name=f"models/{name}", etag=m.etag)
        ),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    bad_mask = registry_pb2.UpdateModelRequest(
        model=registry_pb2.Model(name=f"models/{name}"), update_mask={"paths": ["latest_version"]}
    )
    _check(
        _rpc_error(stub.UpdateModel, bad_mask),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
    )
    _check(
        _rpc_error(stub.ListModels, registry_pb2.ListModelsRequest(page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    _check(
        _rpc_error(stub.ListModels, registry_pb2.ListModelsRequest(order_by="owner")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ORDER_BY",
    )
    _check(
        _rpc_error(stub.ListModels, registry_pb2.ListModelsRequest(filter="labels.team")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FILTER",
    )
    _check(
        _rpc_error(stub.ListModels, registry_pb2.ListModelsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )
    first = client.list_models_page(page_size=1)
    other = registry_pb2.ListModelsRequest(page_token=first.next_page_token, order_by="create_time")
    if first.next_page_token:
        _check(
            _rpc_error(stub.ListModels, other),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        )
    reused = "7f1b3e2a-1111-4111-8111-111111111111"
    client.create_model(unique(), request_id=reused)
    _check(
        _rpc_error(
            stub.DeleteModel,
            registry_pb2.DeleteModelRequest(name=f"models/{name}", request_id=reused),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


def test_invalid_onnx_is_refused_and_nothing_registered(
    stub, client: Client, tmp_path: Path, trained_model: TrainedModel
) -> None:  # type: ignore[no-untyped-def]
    name = unique()
    client.create_model(name)
    not_onnx = client.upload_blob(b"this is not a model")
    truncated = client.upload_blob(trained_model.onnx.read_bytes()[:200])
    for blob in (not_onnx, truncated):
        request = registry_pb2.CreateModelVersionRequest(
            parent=f"models/{name}", artifact_sha256=blob.sha256
        )
        _check(
            _rpc_error(stub.CreateModelVersion, request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ONNX_MODEL",
        )
    missing = registry_pb2.CreateModelVersionRequest(
        parent=f"models/{name}", artifact_sha256="ab" * 32
    )
    _check(
        _rpc_error(stub.CreateModelVersion, missing),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BLOB_NOT_FOUND",
    )
    assert list(client.list_versions(name)) == []
    assert client.get_model(name).latest_version == 0


def _identity_onnx(input_name: str, producer: str) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, producer_name=producer)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("input_name", "producer", "words"),
    [
        ("x\x1b[2J", "exporter", "tensor name 'x\\x1b[2J' contains a control character (code 27)"),
        ("x\ny", "exporter", "contains a control character (code 10)"),
        ("x", "p\x1b]0;title\x07", "producer name contains a control character (code 27)"),
        ("x\x9b2J", "exporter", "contains a control character (code 155)"),
        ("x" * 1025, "exporter", "is longer than 1024 characters"),
    ],
)
def test_onnx_names_with_control_characters_are_refused(
    stub, client: Client, input_name: str, producer: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    """Names read out of the model are shown in tables and logs: escape sequences in them would
    reach other users' terminals."""
    name = unique()
    client.create_model(name)
    blob = client.upload_blob(_identity_onnx(input_name, producer))
    request = registry_pb2.CreateModelVersionRequest(
        parent=f"models/{name}", artifact_sha256=blob.sha256
    )
    error = _rpc_error(stub.CreateModelVersion, request)
    _check(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ONNX_MODEL")
    assert words in error.details(), error.details()
    assert client.get_model(name).latest_version == 0
    good = client.upload_blob(_identity_onnx("x", "exporter"))
    ok = stub.CreateModelVersion(
        registry_pb2.CreateModelVersionRequest(parent=f"models/{name}", artifact_sha256=good.sha256)
    )
    assert ok.version == 1


def test_feature_and_dataset_mismatches(
    client: Client, trained_model: TrainedModel, tmp_path: Path
) -> None:
    from modelplane import InvalidArgument

    name = unique()
    client.create_model(name)
    with pytest.raises(InvalidArgument) as err:
        client.register_version(
            name, trained_model.onnx, feature_names=["a", "b"], capture_env=False
        )
    assert err.value.reason == "FEATURE_COUNT_MISMATCH"
    with pytest.raises(InvalidArgument) as err:
        client.register_version(
            name,
            trained_model.onnx,
            datasets={"train": trained_model.train},
            label="no_such_column",
            capture_env=False,
        )
    assert err.value.reason == "DATASET_COLUMNS_MISSING"
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 not really parquet PAR1")
    with pytest.raises(InvalidArgument) as err:
        client.register_version(
            name, trained_model.onnx, datasets={"train": garbage}, capture_env=False
        )
    assert err.value.reason == "INVALID_DATASET"
    with pytest.raises(InvalidArgument) as err:
        client.register_version(
            name, trained_model.onnx, metrics={"auc": float("nan")}, capture_env=False
        )
    assert err.value.reason == "INVALID_METRIC"
    assert list(client.list_versions(name)) == []


def test_upload_digest_mismatch_and_size_limit(
    blob_stub, controlplane: RunningControlPlane
) -> None:  # type: ignore[no-untyped-def]
    data = b"x" * 1000

    def upload(header: blobs_pb2.UploadBlobHeader, *chunks: bytes):  # type: ignore[no-untyped-def]
        msgs = [blobs_pb2.UploadBlobRequest(header=header)] + [
            blobs_pb2.UploadBlobRequest(chunk=c) for c in chunks
        ]
        return _rpc_error(blob_stub.UploadBlob, iter(msgs))

    wrong = hashlib.sha256(b"other").hexdigest()
    _check(
        upload(blobs_pb2.UploadBlobHeader(sha256=wrong), data),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DIGEST_MISMATCH",
    )
    right = hashlib.sha256(data).hexdigest()
    _check(
        upload(blobs_pb2.UploadBlobHeader(sha256=right, size_bytes=999), data),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SIZE_MISMATCH",
    )
    big = b"y" * (1 << 20)
    chunks = [big] * 9  # 9 MiB against the fixture's 8 MiB limit
    big_sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    _check(
        upload(blobs_pb2.UploadBlobHeader(sha256=big_sha), *chunks),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPLOAD_TOO_LARGE",
    )
    _check(
        upload(blobs_pb2.UploadBlobHeader(sha256=big_sha, size_bytes=9 << 20)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPLOAD_TOO_LARGE",
    )
    no_header = iter([blobs_pb2.UploadBlobRequest(chunk=data)])
    _check(
        _rpc_error(blob_stub.UploadBlob, no_header),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_UPLOAD_HEADER",
    )
    two_headers = iter(
        [blobs_pb2.UploadBlobRequest(header=blobs_pb2.UploadBlobHeader(sha256=right))] * 2
    )
    _check(
        _rpc_error(blob_stub.UploadBlob, two_headers),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPLOAD",
    )
    header_with_bytes_later = iter(
        [
            blobs_pb2.UploadBlobRequest(header=blobs_pb2.UploadBlobHeader(sha256=right)),
            blobs_pb2.UploadBlobRequest(
                header=blobs_pb2.UploadBlobHeader(sha256=right), chunk=data
            ),
        ]
    )
    _check(
        _rpc_error(blob_stub.UploadBlob, header_with_bytes_later),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPLOAD",
    )
    # Nothing was kept: no blob files and no temporary files.
    stored = [p for p in (controlplane.artifact_root / "blobs").rglob("*") if p.is_file()]
    assert stored == []
    assert list((controlplane.artifact_root / "tmp").iterdir()) == []
    for sha in (wrong, right, big_sha):
        err = _rpc_error(blob_stub.GetBlob, blobs_pb2.GetBlobRequest(name=f"blobs/{sha}"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
