"""An upload holds a server thread while it lasts: past ``max_uploads`` an upload is refused at
once (RESOURCE_EXHAUSTED, TOO_MANY_UPLOADS), so however many clients open uploads and send
nothing, other calls and health checks are answered; and an upload that sends no message for
``upload_idle_seconds`` is ended (DEADLINE_EXCEEDED, UPLOAD_IDLE), its partial file removed."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.settings import ControlPlaneSettings
from modelplane.errors import ResourceExhausted, from_rpc_error
from modelplane.v1 import blobs_pb2, blobs_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane

PRINCIPAL = (("x-modelplane-principal", "alice"),)
BIN = Path(sys.executable).parent


def _stalled(stop: threading.Event, header: bool = True) -> Iterator[blobs_pb2.UploadBlobRequest]:
    """An upload that sends its header and a first chunk (or nothing), then nothing more until
    ``stop`` is set."""
    if header:
        declared = blobs_pb2.UploadBlobHeader(sha256="ab" * 32, size_bytes=1 << 20)
        yield blobs_pb2.UploadBlobRequest(header=declared, chunk=b"x" * 1000)
    stop.wait()


def _partial_files(cp: RunningControlPlane) -> list[Path]:
    return list((cp.artifact_root / "tmp").glob("upload-*"))


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Set at the end of a test, so that the stalled uploads' client threads end."""
    event = threading.Event()
    yield event
    event.set()


def test_idle_uploads_never_starve_other_calls_and_are_bounded(
    tmp_path: Path, db_url: str, stop: threading.Event
) -> None:
    # Four RPC threads (and one for watches), two of them for uploads at most.
    cp = start_controlplane(tmp_path, db_url, max_workers=4, max_watches=1, max_uploads=2)
    channel = grpc.insecure_channel(cp.address)
    upload = blobs_pb2_grpc.BlobServiceStub(channel).UploadBlob
    try:
        held = [upload.future(_stalled(stop), metadata=PRINCIPAL, timeout=60) for _ in range(2)]
        for _ in range(600):
            if len(_partial_files(cp)) == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the first two uploads were never received")
        # More uploads than the server has threads: each past the limit is refused at once.
        more = [upload.future(_stalled(stop), metadata=PRINCIPAL, timeout=60) for _ in range(4)]
        for call in more:
            refused = from_rpc_error(call.exception(timeout=30))
            assert refused.reason == "TOO_MANY_UPLOADS" and "max_uploads" in refused.message
            assert isinstance(refused, ResourceExhausted)
        # Calls and health checks are answered while the two uploads stay open.
        assert _health(cp.address) == health_pb2.HealthCheckResponse.SERVING
        model_id = unique()
        with cp.client() as c:
            c.create_model(model_id)
            assert c.get_model(model_id).name == f"models/{model_id}"
            with pytest.raises(ResourceExhausted):
                c.upload_blob(b"refused while two uploads are open")
            held.pop().cancel()  # the uploader leaves: its slot frees
            for _ in range(200):
                try:
                    blob = c.upload_blob(b"taken once a slot is free")
                    break
                except ResourceExhausted:
                    time.sleep(0.05)  # the server notices the cancelled upload
            else:
                raise AssertionError("a freed upload slot was never reused")
        assert blob.size_bytes == len(b"taken once a slot is free")
        assert all(not call.done() for call in held)
    finally:
        stop.set()
        channel.close()
        cp.handle.stop(0)


@pytest.mark.parametrize("header", [True, False], ids=["after-a-chunk", "before-the-header"])
def test_an_idle_upload_is_ended_and_its_partial_file_removed(
    tmp_path: Path, db_url: str, stop: threading.Event, header: bool
) -> None:
    cp = start_controlplane(tmp_path, db_url, upload_idle_seconds=0.5)
    channel = grpc.insecure_channel(cp.address)
    try:
        upload = blobs_pb2_grpc.BlobServiceStub(channel).UploadBlob
        with pytest.raises(grpc.RpcError) as ended:
            # Far longer than the idle limit: a server that never ends the upload fails the
            # test with the client's own deadline, which carries no reason.
            upload(_stalled(stop, header), metadata=PRINCIPAL, timeout=60)
        err = from_rpc_error(ended.value)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.reason == "UPLOAD_IDLE"
        assert (
            "MODELPLANE_UPLOAD_IDLE_SECONDS" in err.message and "nothing was stored" in err.message
        )
        assert _partial_files(cp) == []
        # An upload that keeps sending is unaffected.
        with cp.client() as c:
            data = os.urandom(3 << 20)
            assert c.upload_blob(data).size_bytes == len(data)
    finally:
        stop.set()
        channel.close()
        cp.handle.stop(0)


def test_uploads_take_half_the_rpc_threads_unless_set() -> None:
    assert ControlPlaneSettings(max_workers=16).upload_slots == 8
    assert ControlPlaneSettings(max_workers=1).upload_slots == 1
    assert ControlPlaneSettings(max_workers=16, max_uploads=3).upload_slots == 3
