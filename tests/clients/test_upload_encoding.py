"""The SDK's hand-serialized upload messages are byte for byte what protobuf writes."""

from __future__ import annotations

import os

import pytest

from modelplane._client import encode_chunk
from modelplane.v1 import blobs_pb2


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 1 << 20])
def test_an_encoded_chunk_matches_protobuf_and_parses_back(size: int) -> None:
    chunk = os.urandom(size)
    encoded = encode_chunk(chunk)
    assert encoded == blobs_pb2.UploadBlobRequest(chunk=chunk).SerializeToString()
    parsed = blobs_pb2.UploadBlobRequest.FromString(encoded)
    assert not parsed.HasField("header")
    assert parsed.chunk == chunk


@pytest.mark.parametrize("size", [0, 300, 1 << 20])
def test_the_first_message_carries_the_header_and_the_first_chunk(size: int) -> None:
    chunk = os.urandom(size)
    header = blobs_pb2.UploadBlobHeader(sha256="ab" * 32, size_bytes=size, media_type="text/csv")
    prefix = blobs_pb2.UploadBlobRequest(header=header).SerializeToString()
    encoded = encode_chunk(memoryview(chunk), prefix)
    expected = blobs_pb2.UploadBlobRequest(header=header, chunk=chunk)
    assert encoded == expected.SerializeToString()
    assert blobs_pb2.UploadBlobRequest.FromString(encoded) == expected
