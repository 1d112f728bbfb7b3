"""Blobs by sha256 in object storage: an artifact root such as ``s3://bucket/prefix`` or
``gs://bucket/prefix``, opened through ``pyarrow.fs``.

The layout under the prefix is the local store's: ``blobs/sha256/<2 hex>/<digest>``. An upload
is received into a local temporary file (kept in memory up to a few MiB), hashed on the way,
and sent to its final key only once its size and digest are checked, so a refused upload never
reaches the bucket. S3 and GCS make an object visible only when its upload completes: a reader
sees the whole blob or none, and a crash mid-upload leaves nothing under the prefix. Two
replicas that upload the same bytes write the same object.

Connection settings come from the URI's query (``?endpoint_override=host:port&scheme=http&
region=...`` for an S3-compatible server) and credentials from the provider's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, the instance's role; for GCS,
application default credentials). A store that cannot be reached answers UNAVAILABLE
(ARTIFACT_STORE_UNAVAILABLE), which clients retry; nothing is half-written either way.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import structlog

from controlplane.blobstore import (
    CHUNK_BYTES,
    RECENT_BLOB_MAX_BYTES,
    Blobs,
    BlobStore,
    Received,
    RecentUploads,
    _storage_full,
    check_declared,
    is_object_uri,
)
from controlplane.names import check_sha256
from modelplane.errors import InvalidArgument, NotFound, Unavailable

log = structlog.get_logger("modelplane.controlplane")


def open_blob_store(root: str, max_upload_bytes: int) -> Blobs:
    """The blob store an artifact root names: object storage for ``s3://`` and ``gs://``
    URIs, else a folder (see :meth:`BlobStore.open`)."""
    if is_object_uri(root):
        return ObjectBlobStore.open(root, max_upload_bytes)
    return BlobStore.open(root, max_upload_bytes)


def redacted(uri: str) -> str:
    """``uri`` without user information or query (credentials must not reach logs)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


class ObjectBlobStore:
    """Files by sha256 under a prefix of an object store. Open it with :meth:`open`."""

    def __init__(self, fs: pafs.FileSystem, base: str, uri: str, max_upload_bytes: int) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.uri = redacted(uri)
        self.max_upload_bytes = max_upload_bytes
        self.recent = RecentUploads()

    @classmethod
    def open(cls, uri: str, max_upload_bytes: int) -> ObjectBlobStore:
        """Resolve ``uri`` and check that its bucket answers.

        INVALID_ARGUMENT (INVALID_ARTIFACT_ROOT) for a URI ``pyarrow.fs`` cannot use or a
        bucket that does not exist; UNAVAILABLE (ARTIFACT_STORE_UNAVAILABLE) when the store
        does not answer."""
        shown = redacted(uri)
        try:
            fs, base = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise InvalidArgument(
                f"artifact root {shown}: {exc}", reason="INVALID_ARTIFACT_ROOT"
            ) from None
        if not base.strip("/") or base.startswith("/"):
            raise InvalidArgument(
                f"artifact root {shown}: name a bucket, as {urlsplit(uri).scheme}://BUCKET/PREFIX",
                reason="INVALID_ARTIFACT_ROOT",
            )
        store = cls(fs, base, uri, max_upload_bytes)
        bucket = base.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type
        except OSError as exc:
            raise Unavailable(
                f"artifact root {shown}: the store did not answer ({_first_line(exc)})",
                reason="ARTIFACT_STORE_UNAVAILABLE",
            ) from None
        if found == pafs.FileType.NotFound:
            raise InvalidArgument(
                f"artifact root {shown}: bucket {bucket!r} does not exist (or these credentials "
                "cannot see it); create it first",
                reason="INVALID_ARTIFACT_ROOT",
            )
        log.info("artifact store opened", artifact_root=shown)
        return store

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self.base}/blobs/sha256/{sha256[:2]}/{sha256}"

    def _unreachable(self, exc: OSError) -> Unavailable:
        log.warning("artifact store did not answer", artifact_root=self.uri, error=str(exc))
        return Unavailable(
            f"the artifact store {self.uri} did not answer ({_first_line(exc)}); nothing was "
            "changed: retry shortly",
            reason="ARTIFACT_STORE_UNAVAILABLE",
        )

    def _info(self, sha256: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self._key(sha256))
        except OSError as exc:
            raise self._unreachable(exc) from None

    def exists(self, sha256: str) -> bool:
        return self._info(sha256).type == pafs.FileType.File

    def size(self, sha256: str) -> int:
        """The stored blob's size in bytes; NOT_FOUND when it has none."""
        info = self._info(sha256)
        if info.type != pafs.FileType.File:
            raise _missing(sha256)
        return int(info.size)

    def receive(self, chunks: Iterable[bytes], sha256: str, size_bytes: int = 0) -> int:
        """Store the bytes of ``chunks`` under ``sha256``; returns the size. Refuses (and
        sends nothing to the store) when they exceed the upload limit, differ in size from
        ``size_bytes`` (when non-zero), or hash to another digest."""
        check_declared(sha256, size_bytes, self.max_upload_bytes)
        received = Received(self.max_upload_bytes)
        with tempfile.SpooledTemporaryFile(max_size=RECENT_BLOB_MAX_BYTES) as spool:
            with _storage_full():
                for chunk in received.count(chunks):
                    spool.write(chunk)
            total = received.check(sha256, size_bytes)
            spool.seek(0)
            self._send(spool, sha256)
            if total <= RECENT_BLOB_MAX_BYTES:
                spool.seek(0)
                self.recent.put(sha256, spool.read())
        return total

    def _send(self, source: IO[bytes], sha256: str) -> None:
        """Write ``source`` to the blob's key unless an object is already there (the same
        bytes: the key is their digest)."""
        if self.exists(sha256):
            return
        try:
            with self.fs.open_output_stream(self._key(sha256)) as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
        except OSError as exc:
            raise self._unreachable(exc) from None

    def read_bytes(self, sha256: str) -> bytes:
        """The blob's bytes: from memory when it was uploaded here recently, else the store."""
        check_sha256(sha256)
        recent = self.recent.take(sha256)
        if recent is not None:
            return recent
        return b"".join(self.iter_chunks(sha256))

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        key = self._key(sha256)
        try:
            stream = self.fs.open_input_stream(key)
        except FileNotFoundError:
            raise _missing(sha256) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        with stream:
            while True:
                try:
                    chunk = stream.read(chunk_bytes)
                except OSError as exc:
                    raise self._unreachable(exc) from None
                if not chunk:
                    return
                yield chunk

    def put_bytes(self, data: bytes) -> str:
        """Store bytes the server produced itself (e.g. a baseline profile); returns the digest."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.exists(sha):
            self.receive([data], sha, len(data))
        return sha


def _missing(sha256: str) -> NotFound:
    return NotFound(f"blob {sha256} has no stored bytes", reason="BLOB_NOT_FOUND")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
