"""The SDK's retries, against a gRPC server that answers UNAVAILABLE a set number of times:
a retried mutation carries the same request id on every try, a failed one hands its id back
for a manual retry, and nothing but UNAVAILABLE is retried."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from modelplane import Client
from modelplane.errors import DeadlineExceeded, InvalidArgument, ModelplaneError, Unavailable
from modelplane.testing.processes import free_port
from modelplane.v1 import audit_pb2, blobs_pb2, registry_pb2


@dataclass
class FlakyRegistry:
    """CreateModel and GetModel that fail with ``code`` for the first ``failures`` calls."""

    failures: int
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    #: Seconds each call takes before it answers.
    delay: float = 0.0
    seen: list[str] = field(default_factory=list)
    #: The deadline each call arrived with (seconds left).
    remaining: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _answer(self, key: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.seen.append(key)
            self.remaining.append(context.time_remaining())
            failing = len(self.seen) <= self.failures
        time.sleep(self.delay)
        if failing:
            context.abort(self.code, "the database is busy")

    def create(self, request: registry_pb2.CreateModelRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        self._answer(request.request_id, context)
        return registry_pb2.Model(name=f"models/{request.model_id}")

    def get(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        self._answer(request.name, context)
        return registry_pb2.Model(name=request.name)


@pytest.fixture
def serve_on() -> Iterator[object]:
    """Start a server for a ``FlakyRegistry`` on a port (0: any free one); returns its port."""
    servers: list[grpc.Server] = []

    def start(registry: FlakyRegistry, port: int = 0) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {
            "CreateModel": grpc.unary_unary_rpc_method_handler(
                registry.create,
                request_deserializer=registry_pb2.CreateModelRequest.FromString,
                response_serializer=registry_pb2.Model.SerializeToString,
            ),
            "GetModel": grpc.unary_unary_rpc_method_handler(
                registry.get,
                request_deserializer=registry_pb2.GetModelRequest.FromString,
                response_serializer=registry_pb2.Model.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("modelplane.v1.RegistryService", handlers),)
        )
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
        return bound

    yield start
    for server in servers:
        server.stop(0)


@pytest.fixture
def serve(serve_on) -> object:  # type: ignore[no-untyped-def]
    """Start a server for a ``FlakyRegistry`` on a free port; returns its address."""
    return lambda registry: f"127.0.0.1:{serve_on(registry)}"


def test_a_mutation_is_retried_with_one_request_id(serve) -> None:  # type: ignore[no-untyped-def]
    registry = FlakyRegistry(failures=2)
    with Client(serve(registry), timeout=10, retries=3) as c:
        assert c.create_model("m").name == "models/m"
        assert c.get_model("m").name == "models/m"
    ids = registry.seen[:3]
    assert len(set(ids)) == 1 and ids[0]
    assert registry.seen[3:] == ["models/m"]


def test_a_failed_mutation_hands_back_its_request_id(serve) -> None:  # type: ignore[no-untyped-def]
    registry = FlakyRegistry(failures=5)
    with Client(serve(registry), timeout=10, retries=2) as c:
        with pytest.raises(ModelplaneError) as err:
            c.create_model("m")
        sent = registry.seen[-1]
        assert len(registry.seen) == 2 and err.value.metadata["request_id"] == sent
        registry.failures = 0
        # The manual retry with that id sends the same request again.
        c.create_model("m", request_id=err.value.metadata["request_id"])
    assert registry.seen[-1] == sent


def test_retries_share_the_calls_timeout(serve) -> None:  # type: ignore[no-untyped-def]
    """Each try gets what is left of the timeout, and no try starts once the backoff would
    leave it no time: a server that answers UNAVAILABLE after 0.6 s is tried at most twice
    within a 1 s timeout, not ``retries`` times with 1 s each."""
    registry = FlakyRegistry(failures=100, delay=0.6)
    with (
        Client(serve(registry), timeout=1.0, retries=5) as c,
        pytest.raises((Unavailable, DeadlineExceeded)),
    ):
        c.get_model("m")
    assert 1 <= len(registry.seen) <= 2
    # (gRPC rounds a deadline it sends up a little, so compare the tries with each other.)
    assert registry.remaining[0] < 1.5
    if len(registry.remaining) == 2:
        assert registry.remaining[1] < registry.remaining[0] - 0.5


def test_only_unavailable_is_retried(serve) -> None:  # type: ignore[no-untyped-def]
    registry = FlakyRegistry(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with Client(serve(registry), timeout=10, retries=3) as c, pytest.raises(InvalidArgument):
        c.create_model("m")
    assert len(registry.seen) == 1


def test_a_retried_upload_sends_the_whole_stream_again() -> None:
    """An upload answered UNAVAILABLE is sent again from its first chunk, header included."""
    seen: list[tuple[str, int]] = []

    def upload(requests: Iterator[blobs_pb2.UploadBlobRequest], context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        messages = list(requests)
        header = messages[0].header.sha256 if messages else ""
        seen.append((header, sum(len(m.chunk) for m in messages)))
        if len(seen) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the database is busy")
        return blobs_pb2.Blob(name=f"blobs/{header}", sha256=header)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.stream_unary_rpc_method_handler(
        upload,
        request_deserializer=blobs_pb2.UploadBlobRequest.FromString,
        response_serializer=blobs_pb2.Blob.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "modelplane.v1.BlobService", {"UploadBlob": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = b"x" * 3_000_000  # several chunks
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Client(f"127.0.0.1:{port}", timeout=10, retries=3) as c:
            assert c.upload_blob(data).sha256 == digest
    finally:
        server.stop(0)
    assert seen == [(digest, len(data)), (digest, len(data))]


def test_a_retry_reaches_a_server_that_came_back(serve_on) -> None:  # type: ignore[no-untyped-def]
    """The server is down for the first try and up again right after it: a retry within the
    call's timeout reaches it (the channel reconnects in time for the retries)."""
    port = free_port()
    registry = FlakyRegistry(failures=0)
    started = threading.Event()

    def start_when_refused(state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not started.is_set():
            started.set()
            serve_on(registry, port)

    with Client(f"127.0.0.1:{port}", timeout=10, retries=3) as c:
        c._channel.subscribe(start_when_refused)
        try:
            assert c.get_model("m").name == "models/m"
        finally:
            c._channel.unsubscribe(start_when_refused)
    assert started.is_set() and registry.seen == ["models/m"]


@pytest.fixture
def streaming_server() -> Iterator[tuple[str, list[str]]]:
    """DownloadBlob and ExportAuditEvents that answer UNAVAILABLE to their first call, then
    stream two chunks; returns the address and the methods called, in order."""
    data = b"abc" * 1000
    calls: list[str] = []

    def chunks(method: str, context: grpc.ServicerContext) -> Iterator[bytes]:
        calls.append(method)
        if calls.count(method) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the database is busy")
        yield data[:1000]
        yield data[1000:]

    def download(request: blobs_pb2.DownloadBlobRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for chunk in chunks("DownloadBlob", context):
            yield blobs_pb2.DownloadBlobResponse(chunk=chunk)

    def export(request: audit_pb2.ExportAuditEventsRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for chunk in chunks("ExportAuditEvents", context):
            yield audit_pb2.ExportAuditEventsResponse(chunk=chunk)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "modelplane.v1.BlobService",
                {
                    "DownloadBlob": grpc.unary_stream_rpc_method_handler(
                        download,
                        request_deserializer=blobs_pb2.DownloadBlobRequest.FromString,
                        response_serializer=blobs_pb2.DownloadBlobResponse.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "modelplane.v1.AuditService",
                {
                    "ExportAuditEvents": grpc.unary_stream_rpc_method_handler(
                        export,
                        request_deserializer=audit_pb2.ExportAuditEventsRequest.FromString,
                        response_serializer=audit_pb2.ExportAuditEventsResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", calls
    server.stop(0)


def test_a_download_the_server_could_not_take_is_retried(streaming_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    address, calls = streaming_server
    data = b"abc" * 1000
    out = tmp_path / "blob.bin"
    with Client(address, timeout=10, retries=3) as c:
        assert c.download_blob(hashlib.sha256(data).hexdigest(), out) == out
    assert out.read_bytes() == data
    assert calls == ["DownloadBlob", "DownloadBlob"]
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]  # no temporary file left


def test_an_audit_export_the_server_could_not_take_is_retried(streaming_server) -> None:  # type: ignore[no-untyped-def]
    address, calls = streaming_server
    out = io.BytesIO()
    with Client(address, timeout=10, retries=3) as c:
        assert c.export_audit(out) == 3000
    assert out.getvalue() == b"abc" * 1000
    assert calls == ["ExportAuditEvents", "ExportAuditEvents"]


def test_a_download_that_keeps_failing_leaves_no_file(streaming_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    address, calls = streaming_server
    out = tmp_path / "blob.bin"
    with Client(address, timeout=10, retries=1) as c, pytest.raises(Unavailable):
        c.download_blob(hashlib.sha256(b"abc" * 1000).hexdigest(), out)
    assert calls == ["DownloadBlob"] and list(tmp_path.iterdir()) == []


def test_each_pause_between_tries_is_capped(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The backoff doubles per try but no pause is longer than ``MAX_RETRY_PAUSE_S``: with a
    first pause of 100 s, uncapped it would not fit the call's 30 s and no retry would be
    made; capped at 0.3 s the call is tried again at once."""
    import modelplane._client as sdk

    monkeypatch.setattr(sdk, "RETRY_BACKOFF_S", 100.0)
    monkeypatch.setattr(sdk, "MAX_RETRY_PAUSE_S", 0.3, raising=False)
    pauses: list[float] = []
    real_pause = sdk._pause

    def pause(channel: object, seconds: float) -> None:
        pauses.append(seconds)
        real_pause(channel, seconds)  # type: ignore[arg-type]

    monkeypatch.setattr(sdk, "_pause", pause)
    registry = FlakyRegistry(failures=2)
    with Client(serve(registry), timeout=30, retries=3) as c:
        assert c.get_model("m").name == "models/m"
    assert len(registry.seen) == 3
    assert len(pauses) == 2 and all(p == 0.3 for p in pauses), pauses
