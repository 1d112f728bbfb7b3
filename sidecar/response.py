"""Encoding ``ModelInferResponse`` messages straight to their wire bytes.

A response is a few length-delimited fields: the model's name and version (the same for
every answer), the request id, one tensor description per output (the same for every answer
of a given shape) and the outputs' raw bytes. Writing those bytes directly skips building a
protobuf message only to serialize it again, and the fixed parts are encoded once.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelplane.oip import grpc_service_pb2 as pb
from sidecar.signature import Signature

_LEN = struct.Struct("<I")
#: Field tags (field number << 3 | wire type 2) of ModelInferResponse.
_NAME, _VERSION, _ID, _OUTPUT, _RAW = b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32"
#: Distinct (output, shape) descriptions kept; row counts vary, so the cache is bounded.
_META_CACHE = 4096


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def encode_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements as length-prefixed raw bytes (text is sent as UTF-8)."""
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


class ResponseEncoder:
    """Serializes the answers of one model version."""

    def __init__(self, name: str, version: str, signature: Signature) -> None:
        head = b""
        if name:
            head += _field(_NAME, name.encode())
        if version:
            head += _field(_VERSION, version.encode())
        self._head = head
        self._types = {t.name: t.datatype for t in signature.outputs}
        self._meta: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def _describe(self, name: str, shape: tuple[int, ...]) -> bytes:
        tensor = pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype=self._types[name], shape=shape
        )
        meta = _field(_OUTPUT, tensor.SerializeToString())
        if len(self._meta) >= _META_CACHE:
            self._meta.clear()
        self._meta[(name, shape)] = meta
        return meta

    def encode(
        self, request_id: str, names: Sequence[str], arrays: Sequence[np.ndarray[Any, Any]]
    ) -> bytes:
        """The serialized response carrying ``arrays`` (the outputs ``names``) as raw bytes."""
        parts = [self._head]
        if request_id:
            parts.append(_field(_ID, request_id.encode()))
        raws: list[bytes] = []
        meta_of = self._meta.get
        types = self._types
        for name, array in zip(names, arrays, strict=True):
            shape = array.shape
            parts.append(meta_of((name, shape)) or self._describe(name, shape))
            raws.append(encode_bytes(array) if types[name] == "BYTES" else array.tobytes())
        for raw in raws:
            parts.append(_RAW)
            parts.append(varint(len(raw)))
            parts.append(raw)
        return b"".join(parts)
