"""An artifact root in object storage (``s3://BUCKET/PREFIX``), against a real S3 endpoint
(moto's server): the blob store on its own, the control plane's registry, evaluation and
downloads on it, a store that stops answering, and the roots refused at start."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from controlplane.audit import load_or_create_signing_key
from controlplane.objectstore import ObjectBlobStore, open_blob_store
from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
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
    # A key named explicitly must exist: the server creates only its default one.
    load_or_create_signing_key(tmp_path / "keys" / "signing.pem")
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
    load_or_create_signing_key(tmp_path / "signing.pem")
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


#: Artifact roots carrying credentials, each with pieces of its secret no output may show.
WITH_CREDENTIALS = [
    ("s3://someone:hunter2@{bucket}/art?{query}", ["hunter2", "someone"]),
    ("S3://AKIAEXAMPLE:wJalrSECRETKEY@{bucket}/prod?{query}", ["AKIAEXAMPLE", "wJalr"]),
    ("s3://AKIDEXAMPLE:wJalrXUt/K7MDENG+bPxRfiCY@{bucket}/prod?{query}", ["AKID", "K7MDENG"]),
]


@pytest.mark.parametrize(("template", "secrets"), WITH_CREDENTIALS)
def test_serve_refuses_credentials_in_the_root_and_never_repeats_them(
    s3: S3Server, tmp_path: Path, template: str, secrets: list[str]
) -> None:
    root = template.format(bucket=s3.new_bucket(), query=s3.query)
    key = ("--signing-key", str(tmp_path / "signing.pem"))
    result = serve_refused(tmp_path, "--artifact-root", root, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "credentials do not belong in the URI" in line, line
    for secret in secrets:
        assert secret.lower() not in result.stderr.lower(), result.stderr
    with pytest.raises(InvalidArgument) as err:
        open_blob_store(root, MIB)
    assert err.value.reason == "INVALID_ARTIFACT_ROOT"
    assert not any(secret.lower() in err.value.message.lower() for secret in secrets)


def test_serve_refuses_roots_it_cannot_use_in_one_line(s3: S3Server, tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path / "signing.pem")
    key = ("--signing-key", str(tmp_path / "signing.pem"))
    # A bucket that does not exist.
    root = f"s3://{unique('nobucket')}/art?{s3.query}"
    result = serve_refused(tmp_path, "--artifact-root", root, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "INVALID_ARTIFACT_ROOT" in line and "does not exist" in line
    # The same with --workers: the supervisor checks the root before starting any worker.
    result = serve_refused(tmp_path, "--artifact-root", root, *key, "--workers", "2", env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "INVALID_ARTIFACT_ROOT" in line and "does not exist" in line
    # A store that does not answer: the exit status of a server that cannot be reached.
    closed = f"s3://bucket/art?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=x"
    result = serve_refused(tmp_path, "--artifact-root", closed, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 4 and "ARTIFACT_STORE_UNAVAILABLE" in line
    # No region: the bucket's region is asked of AWS, out of reach here (or, where it is in
    # reach, a bucket no one has or these credentials may not read): a reason either way.
    nowhere = f"s3://{unique('nobucket')}/art"
    result = serve_refused(tmp_path, "--artifact-root", nowhere, *key, env=S3_ENV)
    line = _error_line(result)
    assert result.returncode in (2, 4) and re.search(
        r"\((ARTIFACT_STORE_\w+|INVALID_ARTIFACT_ROOT)\)", line
    ), line
    # No signing key named: its default place is a folder the root does not have.
    result = serve_refused(tmp_path, "--artifact-root", s3.uri("bucket"), env=S3_ENV)
    line = _error_line(result)
    assert result.returncode == 2 and "--signing-key" in line
    # A bucket, not just an endpoint; no empty path segment.
    for bad in (f"s3://?{s3.query}", f"s3://bucket//art?{s3.query}", f"s3://b/a//c/?{s3.query}"):
        with pytest.raises(InvalidArgument) as err:
            open_blob_store(bad, MIB)
        assert err.value.reason == "INVALID_ARTIFACT_ROOT", bad


def test_a_gcs_store_that_does_not_answer_is_unavailable_in_bounded_time() -> None:
    """pyarrow's GCS client retries without a bound by default; the root gets one."""
    root = f"gs://anonymous@bucket/art?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    with pytest.raises(Unavailable) as err:
        open_blob_store(root, MIB)
    assert err.value.reason == "ARTIFACT_STORE_UNAVAILABLE"
    assert "gs://bucket/art" in err.value.message and "anonymous" not in err.value.message


class _FailingSource(io.BytesIO):
    """An upload's spool whose disk fails after the first chunk."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return super().read(size)


def test_no_key_is_left_holding_part_of_its_bytes(
    store: tuple[ObjectBlobStore, str], s3: S3Server
) -> None:
    blobs, bucket = store
    data = bytes(range(256)) * 12_288  # 3 MiB: several chunks
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(Unavailable):
        blobs._send(_FailingSource(data), sha, len(data))
    assert s3.objects(bucket) == {}, "a failed write left a short object"
    # An object already short (left by a process killed mid-way on a store that completes
    # what it has) is replaced by the next upload of those bytes.
    with s3.fs().open_output_stream(_key(bucket, sha)) as out:
        out.write(data[:1000])
    assert blobs.receive([data], sha, len(data)) == len(data)
    assert s3.objects(bucket) == {_key(bucket, sha): len(data)}
    blobs.recent.take(sha)
    assert blobs.read_bytes(sha) == data


def test_a_bucket_removed_while_serving_is_a_failed_precondition(
    store: tuple[ObjectBlobStore, str], s3: S3Server
) -> None:
    blobs, bucket = store
    sha = blobs.put_bytes(b"kept")
    blobs.recent.take(sha)
    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{s3.port}",
        scheme="http",
        region="us-east-1",
        allow_bucket_deletion=True,
    )
    fs.delete_dir(bucket)
    for call in (
        lambda: blobs.read_bytes(sha),
        lambda: blobs.size(sha),
        lambda: blobs.receive([b"new"], hashlib.sha256(b"new").hexdigest()),
    ):
        with pytest.raises(FailedPrecondition) as err:
            call()
        assert err.value.reason == "ARTIFACT_STORE_BUCKET_MISSING", err.value.message


def test_credentials_the_store_refuses_are_a_failed_precondition(tmp_path: Path) -> None:
    """moto's server checking requests once its first few have passed (enough to make the
    bucket): the test's credentials are unknown to it, so later calls are refused with 403."""
    port = free_port()
    env = {**os.environ, **S3_ENV, "INITIAL_NO_AUTH_ACTION_COUNT": "12"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = S3Server(port, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.fs().create_dir("locked")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        for _ in range(40):  # spend what is left of the unchecked requests
            try:
                server.fs().get_file_info("locked/nothing")
            except OSError:
                break
        else:
            pytest.fail("moto never began checking credentials")
        with pytest.raises(FailedPrecondition) as err:
            open_blob_store(server.uri("locked", "art"), MIB)
        assert err.value.reason == "ARTIFACT_STORE_FORBIDDEN", err.value.message
        assert "credentials" in err.value.message
    finally:
        server.stop()
