"""Content-addressed files under the artifact root.

Bytes are written to a temporary file in the root, hashed while they arrive, and moved into
``blobs/sha256/<2 hex>/<digest>`` only when the digest and size match what the client declared.
Paths are built from validated digests alone, so nothing is read or written outside the root.

Blob files are written once and read rarely (registration, evaluation, a sidecar's download),
so the store keeps them out of the page cache. Uploads are written with ``O_DIRECT`` through a
page-aligned buffer that each thread reuses (buffered writes where the file system refuses
direct I/O), and after each whole read the kernel is told the pages will not be needed again
(``POSIX_FADV_DONTNEED``). Cached artifacts would otherwise crowd out the database's pages, and
each upload would fill fresh page-cache pages: on a virtual machine a page's first touch can
cost several times the copy (up to about 2 ms of CPU per MiB written).

The bytes of the latest uploads are also kept in memory for a short while (a bounded, per-process
set), because an upload is almost always followed by the call that uses it: registering a
version reads its artifact back to check the ONNX model. A read of such a blob takes the bytes
from memory instead of the disk; each is handed out once, then only the file remains.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import structlog

from controlplane.names import check_sha256
from modelplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelplaneError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

CHUNK_BYTES = 1 << 20

#: Uploads up to this size are kept in memory until first read (see the module's notes) ...
RECENT_BLOB_MAX_BYTES = 16 << 20
#: ... and at most this many bytes of them per process, the oldest dropped first.
RECENT_TOTAL_BYTES = 64 << 20
#: An upload's temporary file unchanged this long belongs to a process that died mid-upload.
STALE_UPLOAD_SECONDS = 3600.0
UPLOAD_PREFIX = "upload-"

log = structlog.get_logger("modelplane.controlplane")

#: ``scheme://`` at the start of a root: a URI, not a folder name.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


#: Object stores an artifact root may name (see :mod:`controlplane.objectstore`).
OBJECT_SCHEMES = ("s3", "gs", "gcs")


def is_object_uri(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` names object storage (``s3://``, ``gs://``) rather than a folder."""
    text = os.fspath(root)
    return bool(_URI.match(text)) and urlsplit(text).scheme.lower() in OBJECT_SCHEMES


def object_uri_problem(uri: str) -> str:
    """Why ``uri``, an object-storage artifact root, cannot be used ("" when it can): it
    carries credentials (an ``@`` before its query; ``gs://anonymous@...``, GCS without
    credentials, is no secret), names no bucket, or has an empty path segment. The answer
    never repeats the URI's user information."""
    scheme, _, rest = uri.partition("://")
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    if scheme.lower() in ("gs", "gcs") and before_query.startswith("anonymous@"):
        before_query = before_query[len("anonymous@") :]  # GCS without credentials
    if "@" in before_query:
        return (
            "credentials do not belong in the URI (nor an '@' in the bucket or prefix): give "
            "them the provider's usual way (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "~/.aws, the pod's or instance's role; Google's application default credentials)"
        )
    bucket, _, prefix = before_query.partition("/")
    if not bucket:
        return "name a bucket, as s3://BUCKET/PREFIX"
    if prefix.rstrip("/") and "" in prefix.rstrip("/").split("/"):
        return "the prefix has an empty path segment ('//')"
    return ""


def shown_uri(uri: str) -> str:
    """``uri`` as messages and logs show it: its scheme, bucket and prefix, without user
    information, query or fragment (where credentials or secrets could stand)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "(an artifact root)"
    path = rest.split("?", 1)[0].split("#", 1)[0]
    return f"{scheme.lower()}://{path.rsplit('@', 1)[-1]}"


def local_root(root: str | os.PathLike[str]) -> str:
    """The folder an artifact root names: a path as given, or the path of a ``file://`` URI.

    INVALID_ARGUMENT (INVALID_ARTIFACT_ROOT) for any other URI (``hdfs://``, ``s3://``...):
    such a root would otherwise become a folder named ``hdfs:`` under the working directory.
    (Object-storage roots are the other store's: see :func:`is_object_uri`.)"""
    text = os.fspath(root)
    if not _URI.match(text):
        return text
    parts = urlsplit(text)
    if parts.scheme.lower() != "file":
        raise InvalidArgument(
            f"artifact root {text!r}: {parts.scheme}:// URIs are not supported; give a folder "
            "on a local or mounted file system (a path or file:///path), or an object store "
            "as s3://BUCKET/PREFIX or gs://BUCKET/PREFIX",
            reason="INVALID_ARTIFACT_ROOT",
        )
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not parts.path:
        raise InvalidArgument(
            f"artifact root {text!r}: a file URI names a local folder as file:///path",
            reason="INVALID_ARTIFACT_ROOT",
        )
    return unquote(parts.path)


class Blobs(Protocol):
    """What the services need of a blob store, local (:class:`BlobStore`) or object storage
    (:class:`controlplane.objectstore.ObjectBlobStore`)."""

    max_upload_bytes: int
    recent: RecentUploads

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def receive(self, chunks: Iterable[bytes], sha256: str, size_bytes: int = 0) -> int: ...

    def read_bytes(self, sha256: str) -> bytes: ...

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]: ...

    def put_bytes(self, data: bytes) -> str: ...


class RecentUploads:
    """The bytes of recent uploads by digest, bounded in total; each taken at most once."""

    def __init__(self, limit_bytes: int = RECENT_TOTAL_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.total = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self.limit_bytes:
            return
        with self._lock:
            old = self._items.pop(sha256, None)
            if old is not None:
                self.total -= len(old)
            self._items[sha256] = data
            self.total += len(data)
            while self.total > self.limit_bytes:
                _, dropped = self._items.popitem(last=False)
                self.total -= len(dropped)

    def take(self, sha256: str) -> bytes | None:
        with self._lock:
            data = self._items.pop(sha256, None)
            if data is not None:
                self.total -= len(data)
            return data

    def __len__(self) -> int:
        return len(self._items)


class BlobStore:
    """Files by sha256 under ``root``. Create the folders with :meth:`open`."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = root
        self.max_upload_bytes = max_upload_bytes
        self.recent = RecentUploads()
        self._blobs_dir = os.path.join(root, "blobs", "sha256")
        self._tmp_dir = os.path.join(root, "tmp")

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        max_upload_bytes: int,
        *,
        stale_upload_seconds: float = STALE_UPLOAD_SECONDS,
    ) -> BlobStore:
        """Create the folders under ``root`` and remove the temporary files of uploads that
        stopped ``stale_upload_seconds`` ago or more (a process killed mid-upload leaves its
        file behind; younger files may be the uploads of another process sharing the root).

        ``root`` is a folder or a ``file://`` URI; INVALID_ARGUMENT (INVALID_ARTIFACT_ROOT)
        for any other URI (see :func:`local_root`)."""
        path = Path(local_root(root)).expanduser().resolve()
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "tmp").mkdir(parents=True, exist_ok=True)
        removed = sweep_uploads(path / "tmp", stale_upload_seconds)
        if removed:
            log.info("removed stale upload files", count=removed, folder=str(path / "tmp"))
        return cls(path, max_upload_bytes)

    def path(self, sha256: str) -> Path:
        return Path(self._file(sha256))

    def _file(self, sha256: str) -> str:
        check_sha256(sha256)
        return os.path.join(self._blobs_dir, sha256[:2], sha256)

    def exists(self, sha256: str) -> bool:
        return os.path.isfile(self._file(sha256))

    def receive(self, chunks: Iterable[bytes], sha256: str, size_bytes: int = 0) -> int:
        """Store the bytes of ``chunks`` under ``sha256``; returns the size.

        Refuses (and keeps nothing) when the bytes exceed the upload limit, differ in size from
        ``size_bytes`` (when non-zero), or hash to another digest.
        """
        check_declared(sha256, size_bytes, self.max_upload_bytes)
        received = Received(self.max_upload_bytes)
        kept: list[bytes] | None = [] if size_bytes <= RECENT_BLOB_MAX_BYTES else None
        with self._failures("store an upload"):
            fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=self._tmp_dir)
        try:
            with self._failures("store an upload"), _FileWriter(fd) as out:
                for chunk in received.count(chunks):
                    out.write(chunk)
                    if kept is not None:
                        kept.append(chunk)
                        if received.total > RECENT_BLOB_MAX_BYTES:
                            kept = None
                out.finish()
            total = received.check(sha256, size_bytes)
            final = self._file(sha256)
            with self._failures("store an upload"):
                try:
                    os.replace(tmp, final)
                except FileNotFoundError:  # the first blob under this prefix (or its folder gone)
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.replace(tmp, final)
            tmp = ""
            if kept is not None:
                self.recent.put(sha256, b"".join(kept))
            return total
        finally:
            if tmp:
                _remove_upload(tmp)

    @contextlib.contextmanager
    def _failures(self, action: str, *, writing: bool = True) -> Iterator[None]:
        """The file system's errors while doing ``action`` as statuses (see
        :func:`storage_error`)."""
        try:
            yield
        except OSError as err:
            raise storage_error(err, str(self.root), action, writing=writing) from err

    def size(self, sha256: str) -> int:
        """The stored blob's size in bytes; NOT_FOUND when it has none."""
        with self._failures(f"read blob {sha256}", writing=False):
            return os.stat(self._stored_file(sha256)).st_size

    def _stored_file(self, sha256: str) -> str:
        """The blob's file, or NOT_FOUND when it has none."""
        path = self._file(sha256)
        if not os.path.isfile(path):
            raise NotFound(f"blob {sha256} has no stored bytes", reason="BLOB_NOT_FOUND")
        return path

    def read_bytes(self, sha256: str) -> bytes:
        """The blob's bytes: from memory when it was uploaded here recently, else its file."""
        check_sha256(sha256)
        recent = self.recent.take(sha256)
        if recent is not None:
            return recent
        with (
            self._failures(f"read blob {sha256}", writing=False),
            open(self._stored_file(sha256), "rb") as f,
        ):
            data = f.read()
            _drop_cached(f.fileno())
        return data

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        with (
            self._failures(f"read blob {sha256}", writing=False),
            open(self._stored_file(sha256), "rb") as f,
        ):
            while chunk := f.read(chunk_bytes):
                yield chunk
            _drop_cached(f.fileno())

    def put_bytes(self, data: bytes) -> str:
        """Store bytes the server produced itself (e.g. a baseline profile); returns the digest."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.exists(sha):
            self.receive([data], sha, len(data))
        return sha


def check_declared(sha256: str, size_bytes: int, limit: int) -> None:
    """Refuse an upload's header before any byte is read: a malformed digest, a negative
    size, or a size above ``limit``."""
    check_sha256(sha256)
    if size_bytes < 0:
        raise InvalidArgument("size_bytes must not be negative", reason="INVALID_SIZE")
    if size_bytes > limit:
        raise too_large(size_bytes, limit)


class Received:
    """Counts and hashes an upload's chunks as they pass (refusing past ``limit`` bytes),
    then checks them against what the client declared."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.digest = hashlib.sha256()

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.total += len(chunk)
            if self.total > self.limit:
                raise too_large(self.total, self.limit)
            self.digest.update(chunk)
            yield chunk

    def check(self, sha256: str, size_bytes: int) -> int:
        """The size received; INVALID_ARGUMENT when it or the digest is not as declared."""
        if size_bytes and self.total != size_bytes:
            raise InvalidArgument(
                f"received {self.total} bytes but the header declared {size_bytes}",
                reason="SIZE_MISMATCH",
            )
        actual = self.digest.hexdigest()
        if actual != sha256:
            raise InvalidArgument(
                f"the uploaded bytes hash to sha256 {actual}, not the declared {sha256}; "
                "nothing was stored",
                reason="DIGEST_MISMATCH",
                metadata={"declared": sha256, "actual": actual},
            )
        return self.total


def too_large(size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"upload of {size} bytes or more exceeds the server's limit of {limit} bytes",
        reason="UPLOAD_TOO_LARGE",
        metadata={"limit_bytes": str(limit)},
    )


#: Errors that say the file system has no room for the blob.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: Errors that say the server may not write (or read) there: a retry does not mend them.
_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(err: OSError, root: str, action: str, *, writing: bool) -> ModelplaneError:
    """A local artifact root's failure to do ``action`` as a status, as an object store's
    would be: RESOURCE_EXHAUSTED (STORAGE_FULL) for no room, which a retry mends once an
    operator has freed space; FAILED_PRECONDITION (ARTIFACT_STORE_FORBIDDEN) for a read-only
    file system or one that refuses this server's user; UNAVAILABLE
    (ARTIFACT_STORE_UNAVAILABLE) for any other error (EIO, a stale network mount), which may
    pass. The message names the root and the OS error; the log has them too."""
    said = os.strerror(err.errno) if err.errno else str(err)
    log.warning(
        "artifact root failed",
        root=root,
        action=action,
        errno=errno.errorcode.get(err.errno or 0, str(err.errno)),
        error=said,
    )
    nothing = "; nothing was stored" if writing else ""
    if err.errno in _NO_ROOM:
        return ResourceExhausted(
            f"the server's blob storage has no room for this upload ({said}){nothing}: retry "
            "once an operator has freed space",
            reason="STORAGE_FULL",
        )
    if err.errno in _REFUSED:
        return FailedPrecondition(
            f"the artifact root {root} refused to {action} ({said}){nothing}: an operator must "
            f"make it {'writable' if writing else 'readable'} by the server",
            reason="ARTIFACT_STORE_FORBIDDEN",
        )
    return Unavailable(
        f"the artifact root {root} failed to {action} ({said}){nothing}: retry shortly",
        reason="ARTIFACT_STORE_UNAVAILABLE",
    )


@contextlib.contextmanager
def _storage_full() -> Iterator[None]:
    """Turn a write that found no room into RESOURCE_EXHAUSTED (STORAGE_FULL): the caller can
    retry once an operator frees space, and it is not taken for a server bug. (The object
    store's spool in ``TMPDIR``; the local store maps every error, see :func:`storage_error`.)"""
    try:
        yield
    except OSError as err:
        if err.errno not in _NO_ROOM:
            raise
        raise ResourceExhausted(
            f"the server's blob storage has no room for this upload ({os.strerror(err.errno)}); "
            "nothing was stored: retry once an operator has freed space",
            reason="STORAGE_FULL",
        ) from err


def _remove_upload(tmp: str) -> None:
    """Remove an upload's temporary file; one that cannot be removed now (a read-only file
    system) is logged and left to the sweep of a later start."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot remove an upload's temporary file", file=tmp, error=err.strerror)


def sweep_uploads(folder: str | os.PathLike[str], older_than_seconds: float) -> int:
    """Remove the upload files in ``folder`` last written ``older_than_seconds`` ago or more;
    returns how many. Files another process removes meanwhile are skipped."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(UPLOAD_PREFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    return removed


def _drop_cached(fd: int) -> None:
    """Let the kernel release the page-cache pages of ``fd`` (a hint; a no-op where unsupported)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


#: Direct I/O needs the buffer address, file offset and length aligned to the device's logical
#: block size; 4 KiB covers every common device.
_ALIGN = 4096
_DIRECT_BUFFER_BYTES = 1 << 20


class _ThreadBuffer(threading.local):
    """One page-aligned buffer per thread, kept for the thread's life (its pages stay hot)."""

    buffer: mmap.mmap | None = None

    def get(self) -> mmap.mmap:
        if self.buffer is None:
            self.buffer = mmap.mmap(-1, _DIRECT_BUFFER_BYTES)
        return self.buffer


_buffers = _ThreadBuffer()


class _FileWriter:
    """Writes a new file with ``O_DIRECT`` where the file system allows it; closes ``fd``.

    Bytes are gathered in the thread's aligned buffer and written a full buffer at a time; the
    last block is padded with zeros, then the file is cut to its real size. A file system that
    takes the flag but refuses a direct write (``EINVAL``) gets the same bytes buffered.
    :meth:`finish` makes the file durable (fsync).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fill = 0
        self.offset = 0
        self.buffer: mmap.mmap | None = None
        if hasattr(os, "O_DIRECT"):
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
                self.buffer = _buffers.get()
            except OSError:  # e.g. tmpfs: buffered writes
                self.buffer = None

    def __enter__(self) -> _FileWriter:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> None:
        if self.buffer is None:
            self._write_at(memoryview(data))
            return
        view = memoryview(data)
        while view:
            n = min(len(view), _DIRECT_BUFFER_BYTES - self.fill)
            self.buffer[self.fill : self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == _DIRECT_BUFFER_BYTES:
                self._flush(_DIRECT_BUFFER_BYTES)
                self.fill = 0

    def finish(self) -> None:
        """Write what is buffered, cut the padding, fsync."""
        if self.buffer is not None and self.fill:
            size = self.offset + self.fill
            padded = -(-self.fill // _ALIGN) * _ALIGN
            self.buffer[self.fill : padded] = bytes(padded - self.fill)
            self._flush(padded)
            os.ftruncate(self.fd, size)
        os.fsync(self.fd)

    def _flush(self, length: int) -> None:
        assert self.buffer is not None
        view = memoryview(self.buffer)[:length]
        try:
            self._write_at(view)
        except OSError as exc:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            if exc.errno != errno.EINVAL or not flags & os.O_DIRECT:
                raise
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self._write_at(view)

    def _write_at(self, view: memoryview) -> None:
        """Write ``view`` at the file's current end (a retry rewrites the same range)."""
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.offset + done)
        self.offset += done
