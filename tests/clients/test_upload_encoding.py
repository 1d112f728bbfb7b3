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
    assert parsed.WhichOneof("content") == "chunk"
    assert parsed.chunk == chunk
