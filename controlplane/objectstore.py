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
application default credentials), never from the URI, which may not carry them. A store
that cannot be reached answers UNAVAILABLE (ARTIFACT_STORE_UNAVAILABLE), which clients retry;
one that refuses the credentials or whose bucket is gone answers FAILED_PRECONDITION
(ARTIFACT_STORE_FORBIDDEN, ARTIFACT_STORE_BUCKET_MISSING), which a retry does not mend.
Nothing is half-written either way: an object that a failed write left short is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

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
    object_uri_problem,
    shown_uri,
)
from controlplane.names import check_sha256
from modelplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelplaneError,
    NotFound,
    Unavailable,
)

log = structlog.get_logger("modelplane.controlplane")


def open_blob_store(root: str, max_upload_bytes: int) -> Blobs:
    """The blob store an artifact root names: object storage for ``s3://`` and ``gs://``
    URIs, else a folder (see :meth:`BlobStore.open`)."""
    if is_object_uri(root):
        return ObjectBlobStore.open(root, max_upload_bytes)
    return BlobStore.open(root, max_upload_bytes)


#: How long a GCS call may retry before it fails (pyarrow's default has no bound); a URI
#: that sets ``retry_limit_seconds`` keeps its own.
GCS_RETRY_SECONDS = 10


def _opened_uri(uri: str) -> str:
    """The URI handed to ``pyarrow.fs``: its scheme in lower case (pyarrow knows ``s3``, not
    ``S3``), and for GCS a bound on retries unless the URI sets one."""
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme in ("gs", "gcs") and "retry_limit_seconds=" not in rest:
        rest += ("&" if "?" in rest else "?") + f"retry_limit_seconds={GCS_RETRY_SECONDS}"
    return f"{scheme}://{rest}"


class ObjectBlobStore:
    """Files by sha256 under a prefix of an object store. Open it with :meth:`open`."""

    def __init__(self, fs: pafs.FileSystem, base: str, uri: str, max_upload_bytes: int) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.bucket = self.base.split("/", 1)[0]
        self.uri = shown_uri(uri)
        self.max_upload_bytes = max_upload_bytes
        self.recent = RecentUploads()

    @classmethod
    def open(cls, uri: str, max_upload_bytes: int) -> ObjectBlobStore:
        """Resolve ``uri`` and check that its bucket answers.

        INVALID_ARGUMENT (INVALID_ARTIFACT_ROOT) for a URI that carries credentials or that
        ``pyarrow.fs`` cannot use, or a bucket that does not exist; FAILED_PRECONDITION
        (ARTIFACT_STORE_FORBIDDEN) when the store refuses the credentials; UNAVAILABLE
        (ARTIFACT_STORE_UNAVAILABLE) when it does not answer. No message repeats the URI's
        user information or query."""
        shown = shown_uri(uri)
        problem = object_uri_problem(uri)
        if problem:
            raise InvalidArgument(
                f"artifact root {shown}: {problem}", reason="INVALID_ARTIFACT_ROOT"
            )
        opened = _opened_uri(uri)
        try:
            # Without a region in the URI, S3 asks the bucket's region over the network.
            fs, base = pafs.FileSystem.from_uri(opened)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise InvalidArgument(
                f"artifact root {shown}: {_first_line(exc, opened, uri)}",
                reason="INVALID_ARTIFACT_ROOT",
            ) from None
        except OSError as exc:
            raise _store_error(exc, f"artifact root {shown}", "", opened, uri) from None
        store = cls(fs, base, uri, max_upload_bytes)
        try:
            found = fs.get_file_info(store.bucket).type
        except OSError as exc:
            raise _store_error(exc, f"artifact root {shown}", "", opened, uri) from None
        if found == pafs.FileType.NotFound:
            raise InvalidArgument(
                f"artifact root {shown}: bucket {store.bucket!r} does not exist (or these "
                "credentials cannot see it); create it first",
                reason="INVALID_ARTIFACT_ROOT",
            )
        log.info("artifact store opened", artifact_root=shown)
        return store

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self.base}/blobs/sha256/{sha256[:2]}/{sha256}"

    def _failed(self, exc: OSError) -> ModelplaneError:
        log.warning("artifact store call failed", artifact_root=self.uri, error=str(exc))
        return _store_error(
            exc, f"the artifact store {self.uri}", "; nothing was changed: retry shortly"
        )

    def _info(self, sha256: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self._key(sha256))
        except OSError as exc:
            raise self._failed(exc) from None

    def _missing(self, sha256: str) -> ModelplaneError:
        """NOT_FOUND for a blob without an object, unless the bucket itself is gone."""
        try:
            bucket = self.fs.get_file_info(self.bucket).type
        except OSError as exc:
            return self._failed(exc)
        if bucket == pafs.FileType.NotFound:
            return _bucket_gone(self.uri, self.bucket)
        return NotFound(f"blob {sha256} has no stored bytes", reason="BLOB_NOT_FOUND")

    def exists(self, sha256: str) -> bool:
        return self._info(sha256).type == pafs.FileType.File

    def size(self, sha256: str) -> int:
        """The stored blob's size in bytes; NOT_FOUND when it has none."""
        info = self._info(sha256)
        if info.type != pafs.FileType.File:
            raise self._missing(sha256)
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
            self._send(spool, sha256, total)
            if total <= RECENT_BLOB_MAX_BYTES:
                spool.seek(0)
                self.recent.put(sha256, spool.read())
        return total

    def _send(self, source: IO[bytes], sha256: str, total: int) -> None:
        """Write ``source`` (``total`` bytes) to the blob's key unless that object is already
        there whole (the same bytes: the key is their digest). An object left short (a
        stream that ``pyarrow`` completes with what it had when a write failed) is removed
        and the upload refused, so that no key holds less than its bytes."""
        key = self._key(sha256)
        info = self._info(sha256)
        if info.type == pafs.FileType.File and info.size == total:
            return
        try:
            with self.fs.open_output_stream(key) as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
        except BaseException as exc:
            self._discard_short(sha256, total)
            if isinstance(exc, OSError):
                raise self._failed(exc) from None
            raise
        stored = self._info(sha256)
        if stored.type != pafs.FileType.File or stored.size != total:
            self._discard_short(sha256, total)
            raise Unavailable(
                f"the artifact store {self.uri} kept {stored.size} of the upload's {total} "
                "bytes; nothing was recorded: retry",
                reason="ARTIFACT_STORE_UNAVAILABLE",
            )

    def _discard_short(self, sha256: str, total: int) -> None:
        """Remove the blob's object if it holds other than ``total`` bytes (best effort)."""
        with contextlib.suppress(OSError):
            info = self.fs.get_file_info(self._key(sha256))
            if info.type == pafs.FileType.File and info.size != total:
                self.fs.delete_file(self._key(sha256))

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
            raise self._missing(sha256) from None
        except OSError as exc:
            raise self._failed(exc) from None
        with stream:
            while True:
                try:
                    chunk = stream.read(chunk_bytes)
                except OSError as exc:
                    raise self._failed(exc) from None
                if not chunk:
                    return
                yield chunk

    def put_bytes(self, data: bytes) -> str:
        """Store bytes the server produced itself (e.g. a baseline profile); returns the digest.
        An object already there whole is left as it is (``_send`` looks: one request)."""
        sha = hashlib.sha256(data).hexdigest()
        self.receive([data], sha, len(data))
        return sha


#: Words in the store's errors that say its answer will not change on a retry.
_FORBIDDEN = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "403", "PERMISSION_DENIED")
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket")


def _store_error(
    exc: OSError, what: str, tail: str, opened: str = "", uri: str = ""
) -> ModelplaneError:
    """A store's failure as a status: FAILED_PRECONDITION for refused credentials
    (ARTIFACT_STORE_FORBIDDEN) or a bucket gone (ARTIFACT_STORE_BUCKET_MISSING), which a
    retry does not mend; UNAVAILABLE (ARTIFACT_STORE_UNAVAILABLE) otherwise."""
    text = str(exc)
    first = _first_line(exc, opened, uri)
    if any(word in text for word in _FORBIDDEN):
        return FailedPrecondition(
            f"{what}: the store refused this server's credentials ({first}); give them "
            "read, write and list rights on the bucket and prefix",
            reason="ARTIFACT_STORE_FORBIDDEN",
        )
    if any(word in text for word in _NO_BUCKET):
        return FailedPrecondition(
            f"{what}: its bucket does not exist ({first}); create it",
            reason="ARTIFACT_STORE_BUCKET_MISSING",
        )
    return Unavailable(
        f"{what}: the store did not answer ({first}){tail}",
        reason="ARTIFACT_STORE_UNAVAILABLE",
    )


def _bucket_gone(shown: str, bucket: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the artifact store {shown}: bucket {bucket!r} no longer exists; recreate it (the "
        "blobs it held are lost)",
        reason="ARTIFACT_STORE_BUCKET_MISSING",
    )


def _first_line(exc: BaseException, *uris: str) -> str:
    """The first line of ``exc``'s text, with any URI it repeats shown without credentials."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    for uri in uris:
        if uri:
            text = text.replace(uri, shown_uri(uri))
    return text
