"""An artifact root in object storage (``s3://BUCKET/PREFIX``), against a real S3 endpoint
(moto's server): the blob store on its own, the control plane's registry, evaluation and
downloads on it, a store that stops answering, and the roots refused at start."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from controlplane.objectstore import ObjectBlobStore, open_blob_store
from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from modelplane.profiles import BaselineProfile
from modelplane.testing.processes import free_port
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel, serve_refused
from tests.s3server import S3_ENV, S3Server, start_s3

MIB = 1 << 20


def _key(bucket: str, sha: str, prefix: str = "art") -> str:
    return "/".join(p for p in (bucket, prefix, "blobs/sha256", sha[:2], sha) if p)


@pytest.fixture
def store(s3: S3Server) -> tuple[ObjectBlobStore, str]:
    bucket = s3.new_bucket()
    blobs = open_blob_store(s3.uri(bucket, "art"), 4 * MIB)
    assert isinstance(blobs, ObjectBlobStore)
    return blobs, bucket


def test_blobs_go_to_their_key_and_come_back_whole(
    store: tuple[ObjectBlobStore, str], s3: S3Server
) -> None:
    blobs, bucket = store
    data = bytes(range(256)) * 12_000  # 3 MiB in 64 KiB pieces
    sha = hashlib.sha256(data).hexdigest()
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    assert blobs.receive(iter(pieces), sha, len(data)) == len(data)
    assert s3.objects(bucket) == {_key(bucket, sha): len(data)}
    assert blobs.exists(sha) and blobs.size(sha) == len(data)
    assert blobs.read_bytes(sha) == data  # from memory: the upload was just received
    assert blobs.read_bytes(sha) == data  # from the store
    assert b"".join(blobs.iter_chunks(sha, 1000 * 1000)) == data
    # Stored bytes made by the server itself, twice: one object.
    profile = b'{"a profile": 1}'
    assert blobs.put_bytes(profile) == blobs.put_bytes(profile)
    assert len(s3.objects(bucket)) == 2


def test_refused_uploads_reach_nothing_in_the_bucket(
    store: tuple[ObjectBlobStore, str], s3: S3Server
) -> None:
    blobs, bucket = store
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidArgument) as err:
        blobs.receive([data], hashlib.sha256(b"other").hexdigest())
    assert err.value.reason == "DIGEST_MISMATCH"
    with pytest.raises(InvalidArgument) as err:
        blobs.receive([data], sha, 999)
    assert err.value.reason == "SIZE_MISMATCH"
    with pytest.raises(ResourceExhausted) as too_large:
        blobs.receive([b"y" * MIB] * 5, hashlib.sha256(b"y" * 5 * MIB).hexdigest())
    assert too_large.value.reason == "UPLOAD_TOO_LARGE"
    assert s3.objects(bucket) == {}
    assert not blobs.exists(sha)
    with pytest.raises(NotFound) as missing:
        blobs.read_bytes(sha)
    assert missing.value.reason == "BLOB_NOT_FOUND"
    with pytest.raises(NotFound):
        blobs.size(sha)


@pytest.fixture
def running(s3: S3Server, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A control plane whose artifact root is a prefix of a fresh bucket: (address, bucket)."""
    bucket = s3.new_bucket()
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        db_url=f"sqlite:///{tmp_path / 'cp.db'}",
        artifact_root=s3.uri(bucket, "art"),
        signing_key=str(tmp_path / "keys" / "signing.pem"),
        grace_seconds=1.0,
    )
    handle = start(settings)
    yield f"127.0.0.1:{handle.port}", bucket
    handle.stop(0)


def test_registry_evaluation_and_downloads_run_on_the_bucket(
    running: tuple[str, str], s3: S3Server, trained_model: TrainedModel, tmp_path: Path
) -> None:
    address, bucket = running
    name = unique()
    with Client(address, principal="alice", timeout=60) as c:
        c.create_model(name)
        v = c.register_version(
            name,
            trained_model.onnx,
            datasets={"train": trained_model.train},
            label="target",
            capture_env=False,
        )
        op = c.wait_operation(
            c.evaluate(name, 1, trained_model.holdout, label="target").name, timeout=120
        )
        assert op.done and not op.HasField("error"), op
        artifact = c.download_blob(v.artifact.sha256, tmp_path / "model.onnx")
        profile = c.download_blob(v.baseline.sha256, tmp_path / "profile.json")
    assert artifact.read_bytes() == trained_model.onnx.read_bytes()
    # The profile the server computed from the train data was stored in the bucket too.
    assert BaselineProfile.from_bytes(profile.read_bytes()).row_count == (
        pq.read_metadata(trained_model.train).num_rows
    )
    stored = s3.objects(bucket)
    for path in (trained_model.onnx, trained_model.train, trained_model.holdout):
        data = path.read_bytes()
        assert stored[_key(bucket, hashlib.sha256(data).hexdigest())] == len(data)
    assert stored[_key(bucket, v.baseline.sha256)] == profile.stat().st_size
    assert all(k.startswith(f"{bucket}/art/blobs/sha256/") for k in stored), stored


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[S3Server]]:
    """S3 servers of the test's own, which it may stop and start again (appending each it
    starts); all stopped at the end."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    servers = [start_s3()]
    yield servers
    for server in servers:
        server.stop()


def test_a_store_that_stops_answering_is_unavailable_then_recovers(
    tmp_path: Path, own_s3: list[S3Server]
) -> None:
    own = own_s3[0]
    bucket = own.new_bucket()
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        db_url=f"sqlite:///{tmp_path / 'cp.db'}",
        artifact_root=own.uri(bucket),
        signing_key=str(tmp_path / "signing.pem"),
        grace_seconds=1.0,
    )
    handle = start(settings)
    try:
        address = f"127.0.0.1:{handle.port}"
        with Client(address, principal="alice", timeout=60, retries=1) as c:
            kept = c.upload_blob(b"kept")
            own.stop()
            with pytest.raises(Unavailable) as err:
                c.upload_blob(b"while the store is down")
            assert err.value.reason == "ARTIFACT_STORE_UNAVAILABLE"
            assert "retry" in err.value.message and "s3://" in err.value.message
            # Nothing was recorded for the refused upload; the server keeps serving.
            with pytest.raises(NotFound):
                c.get_blob(hashlib.sha256(b"while the store is down").hexdigest())
            assert c.get_blob(kept.sha256).size_bytes == 4
            own_s3.append(start_s3(own.port))  # an empty store on the same endpoint
            own_s3[-1].fs().create_dir(bucket)
            again = c.upload_blob(b"while the store is down")
            assert again.size_bytes == len(b"while the store is down")
            assert _key(bucket, again.sha256, "") in own_s3[-1].objects(bucket)
    finally:
        handle.stop(0)


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_serve_refuses_roots_it_cannot_use_in_one_line(s3: S3Server, tmp_path: Path) -> None:
    key = ("--signing-key", str(tmp_path / "signing.pem"))
    # A bucket that does not exist; the URI's credentials are not repeated.
    root = f"s3://someone:hunter2@{unique('nobucket')}/art?{s3.query}"
    result = serve_refused(tmp_path, "--artifact-root", root, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "INVALID_ARTIFACT_ROOT" in line and "does not exist" in line
    assert "hunter2" not in result.stderr and "someone" not in result.stderr
    # A store that does not answer: the exit status of a server that cannot be reached.
    closed = f"s3://bucket/art?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=x"
    result = serve_refused(tmp_path, "--artifact-root", closed, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 4 and "ARTIFACT_STORE_UNAVAILABLE" in line
    # No signing key named: its default place is a folder the root does not have.
    result = serve_refused(tmp_path, "--artifact-root", s3.uri("bucket"), env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "--signing-key" in line
    # A bucket, not just an endpoint.
    with pytest.raises(InvalidArgument) as err:
        open_blob_store(f"s3://?{s3.query}", MIB)
    assert err.value.reason == "INVALID_ARTIFACT_ROOT"


def test_downloads_name_the_store_when_it_is_down(own_s3: list[S3Server]) -> None:
    bucket = own_s3[0].new_bucket()
    blobs = open_blob_store(own_s3[0].uri(bucket), MIB)
    sha = blobs.put_bytes(b"some bytes")
    blobs.recent.take(sha)
    own_s3[0].stop()
    with pytest.raises(Unavailable) as err:
        blobs.read_bytes(sha)
    assert err.value.reason == "ARTIFACT_STORE_UNAVAILABLE"
    with pytest.raises(Unavailable):
        blobs.exists(sha)
