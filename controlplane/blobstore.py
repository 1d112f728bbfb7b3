"""Content-addressed files under the artifact root.

Bytes are written to a temporary file in the root, hashed while they arrive, and moved into
``blobs/sha256/<2 hex>/<digest>`` only when the digest and size match what the client declared.
Paths are built from validated digests alone, so nothing is read or written outside the root.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from controlplane.names import check_sha256
from modelplane.errors import InvalidArgument, NotFound, ResourceExhausted

CHUNK_BYTES = 1 << 20


class BlobStore:
    """Files by sha256 under ``root``. Create the folders with :meth:`open`."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = root
        self.max_upload_bytes = max_upload_bytes

    @classmethod
    def open(cls, root: str | os.PathLike[str], max_upload_bytes: int) -> BlobStore:
        path = Path(root).expanduser().resolve()
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "tmp").mkdir(parents=True, exist_ok=True)
        return cls(path, max_upload_bytes)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def receive(self, chunks: Iterable[bytes], sha256: str, size_bytes: int = 0) -> int:
        """Store the bytes of ``chunks`` under ``sha256``; returns the size.

        Refuses (and keeps nothing) when the bytes exceed the upload limit, differ in size from
        ``size_bytes`` (when non-zero), or hash to another digest.
        """
        check_sha256(sha256)
        if size_bytes < 0:
            raise InvalidArgument("size_bytes must not be negative", reason="INVALID_SIZE")
        if size_bytes > self.max_upload_bytes:
            raise self._too_large(size_bytes)
        digest = hashlib.sha256()
        total = 0
        fd, tmp_name = tempfile.mkstemp(prefix="upload-", dir=self.root / "tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    total += len(chunk)
                    if total > self.max_upload_bytes:
                        raise self._too_large(total)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size_bytes and total != size_bytes:
                raise InvalidArgument(
                    f"received {total} bytes but the header declared {size_bytes}",
                    reason="SIZE_MISMATCH",
                )
            actual = digest.hexdigest()
            if actual != sha256:
                raise InvalidArgument(
                    f"the uploaded bytes hash to sha256 {actual}, not the declared {sha256}; "
                    "nothing was stored",
                    reason="DIGEST_MISMATCH",
                    metadata={"declared": sha256, "actual": actual},
                )
            final = self.path(sha256)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return total
        finally:
            tmp.unlink(missing_ok=True)

    def _too_large(self, size: int) -> ResourceExhausted:
        return ResourceExhausted(
            f"upload of {size} bytes or more exceeds the server's limit of "
            f"{self.max_upload_bytes} bytes",
            reason="UPLOAD_TOO_LARGE",
            metadata={"limit_bytes": str(self.max_upload_bytes)},
        )

    def read_bytes(self, sha256: str) -> bytes:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} has no stored bytes", reason="BLOB_NOT_FOUND")
        return path.read_bytes()

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} has no stored bytes", reason="BLOB_NOT_FOUND")
        with path.open("rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def put_bytes(self, data: bytes) -> str:
        """Store bytes the server produced itself (e.g. a baseline profile); returns the digest."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.exists(sha):
            self.receive([data], sha, len(data))
        return sha
