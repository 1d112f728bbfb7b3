"""BlobService over gRPC."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterator
from typing import cast

import grpc

from controlplane.api import converters as cv
from controlplane.services import BlobService
from modelplane.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from modelplane.server import current_context
from modelplane.v1 import blobs_pb2, blobs_pb2_grpc

#: Marks the end of a request stream in the queue its reader fills.
_END = object()


def _chunks(
    first: blobs_pb2.UploadBlobRequest, rest: Iterator[blobs_pb2.UploadBlobRequest]
) -> Iterator[bytes]:
    yield first.chunk
    for message in rest:
        if message.HasField("header"):
            raise InvalidArgument(
                "only the first message of an upload may carry a header", reason="INVALID_UPLOAD"
            )
        yield message.chunk


def _offer(messages: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    """Put ``item`` once there is room, unless the handler stopped reading first."""
    while not stop.is_set():
        try:
            messages.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _idle_limited(
    requests: Iterator[blobs_pb2.UploadBlobRequest], idle_seconds: float
) -> Generator[blobs_pb2.UploadBlobRequest, None, None]:
    """The messages of ``requests``, ended with DEADLINE_EXCEEDED (UPLOAD_IDLE) when none comes
    for ``idle_seconds``. A handler thread blocked in ``next(request_iterator)`` is released
    only when the client ends the stream or the call ends, so the messages are read on a
    helper thread, a message or two ahead; it ends with the call once the handler returns."""
    messages: queue.Queue[object] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        try:
            for message in requests:
                if not _offer(messages, message, stop):
                    return
            _offer(messages, _END, stop)
        except BaseException as exc:  # a cancelled call: raised where the handler reads
            _offer(messages, exc, stop)

    threading.Thread(target=read, name="upload-reader", daemon=True).start()
    try:
        while True:
            try:
                item = messages.get(timeout=idle_seconds)
            except queue.Empty:
                raise DeadlineExceeded(
                    f"no whole upload message arrived for {idle_seconds:g} seconds "
                    "(MODELPLANE_UPLOAD_IDLE_SECONDS of the server) and the upload was ended; "
                    "nothing was stored: upload again without such pauses, over a link that "
                    "carries a message (1 MiB from the SDK) within that time",
                    reason="UPLOAD_IDLE",
                    metadata={"idle_seconds": f"{idle_seconds:g}"},
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(blobs_pb2.UploadBlobRequest, item)
    finally:
        stop.set()


class BlobServicer(blobs_pb2_grpc.BlobServiceServicer):
    """Thin adapter from BlobService RPCs to :class:`controlplane.services.BlobService`.

    At most ``max_uploads`` uploads are received at once (more are refused at once with
    RESOURCE_EXHAUSTED, TOO_MANY_UPLOADS), and an upload that sends no message for
    ``idle_seconds`` is ended (DEADLINE_EXCEEDED, UPLOAD_IDLE), its partial file removed: an
    upload holds a server thread while it lasts, so that uploads, however slow, leave threads
    to other calls and health checks."""

    def __init__(
        self, blobs: BlobService, *, max_uploads: int = 8, idle_seconds: float = 60.0
    ) -> None:
        self.blobs = blobs
        self.max_uploads = max_uploads
        self.idle_seconds = idle_seconds
        self._slots = threading.BoundedSemaphore(max_uploads)

    def UploadBlob(
        self, request_iterator: Iterator[blobs_pb2.UploadBlobRequest], context: grpc.ServicerContext
    ) -> blobs_pb2.Blob:
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"this control plane process already receives {self.max_uploads} uploads; "
                "retry once one has finished, or raise max_uploads (MODELPLANE_MAX_UPLOADS; "
                "keep it below max_workers)",
                reason="TOO_MANY_UPLOADS",
                metadata={"max_uploads": str(self.max_uploads)},
            )
        try:
            requests = _idle_limited(request_iterator, self.idle_seconds)
            with contextlib.closing(requests):
                return self._upload(requests)
        finally:
            self._slots.release()

    def _upload(self, requests: Iterator[blobs_pb2.UploadBlobRequest]) -> blobs_pb2.Blob:
        first = next(requests, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(
                "an upload starts with a header message declaring sha256 (and size_bytes)",
                reason="MISSING_UPLOAD_HEADER",
            )
        h = first.header
        blob = self.blobs.upload(
            current_context(), h.sha256, h.size_bytes, h.media_type, _chunks(first, requests)
        )
        return cv.blob_to_proto(blob)

    def GetBlob(
        self, request: blobs_pb2.GetBlobRequest, context: grpc.ServicerContext
    ) -> blobs_pb2.Blob:
        return cv.blob_to_proto(self.blobs.get(request.name, current_context()))

    def DownloadBlob(
        self, request: blobs_pb2.DownloadBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[blobs_pb2.DownloadBlobResponse]:
        for chunk in self.blobs.download(request.name, current_context()):
            yield blobs_pb2.DownloadBlobResponse(chunk=chunk)
