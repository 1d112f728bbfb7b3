"""BlobService over gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from controlplane.api import converters as cv
from controlplane.services import BlobService
from modelplane.errors import InvalidArgument
from modelplane.server import current_context
from modelplane.v1 import blobs_pb2, blobs_pb2_grpc


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


class BlobServicer(blobs_pb2_grpc.BlobServiceServicer):
    """Thin adapter from BlobService RPCs to :class:`controlplane.services.BlobService`."""

    def __init__(self, blobs: BlobService) -> None:
        self.blobs = blobs

    def UploadBlob(
        self, request_iterator: Iterator[blobs_pb2.UploadBlobRequest], context: grpc.ServicerContext
    ) -> blobs_pb2.Blob:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(
                "an upload starts with a header message declaring sha256 (and size_bytes)",
                reason="MISSING_UPLOAD_HEADER",
            )
        h = first.header
        blob = self.blobs.upload(
            current_context(),
            h.sha256,
            h.size_bytes,
            h.media_type,
            _chunks(first, request_iterator),
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
