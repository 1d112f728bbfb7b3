"""Verified artifacts: download blobs from the control plane into a local cache.

A blob is streamed through ``BlobService.DownloadBlob`` into a temporary file of a unique
name in the cache folder while its sha256 and size are computed; only when both match what
the desired state promised is it renamed to its final name (``<sha256>``), atomically, so
several sidecars on one host may share the folder and a reader never sees a partial file. A
cached file is hashed again before each reuse: nothing unverified is ever loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from modelplane.errors import FailedPrecondition
from modelplane.files import replaced_atomically

log = structlog.get_logger("modelplane.sidecar.artifacts")

_READ_CHUNK = 1 << 20
#: Name prefix of the temporary caches of sidecars given no cache or log folder.
TEMP_CACHE_PREFIX = "modelplane-cache-"


def temporary_cache() -> tuple[Path, Callable[[], None]]:
    """A cache folder in the temporary folder for a sidecar given none, and the function that
    removes it. The folder is locked while this process lives, so that the next sidecar to
    start removes it after a kill (a ``kill -9`` or the OOM killer would otherwise leave a
    copy of every model it held), as it removes the temporary caches no process holds."""
    from modelplane.server.supervisor import hold_dir, sweep_stale_dirs

    sweep_stale_dirs(TEMP_CACHE_PREFIX, "temporary artifact cache")
    folder = Path(tempfile.mkdtemp(prefix=TEMP_CACHE_PREFIX))
    lock = hold_dir(str(folder), create=True)

    def remove() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)

    return folder, remove


class ArtifactMismatch(FailedPrecondition):
    """The bytes received do not have the promised sha256 or size."""


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactCache:
    """Blobs by sha256 in ``directory``; ``download(sha256)`` yields the blob's chunks."""

    def __init__(self, directory: Path, download: Callable[[str], Iterable[bytes]]) -> None:
        self.directory = directory
        self._download = download

    def path(self, sha256: str) -> Path:
        """Where the verified blob ``sha256`` lives."""
        return self.directory / sha256

    def fetch(self, sha256: str, size: int | None = None) -> Path:
        """The path of blob ``sha256`` (``size`` bytes when given), verified; downloads it
        when the cache lacks a good copy. ArtifactMismatch when the bytes are wrong."""
        sha256 = sha256.lower().removeprefix("sha256:")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise FailedPrecondition(
                f"{sha256!r} is not a sha256 digest", reason="INVALID_ARTIFACT_DIGEST"
            )
        final = self.path(sha256)
        if final.is_file():
            got, got_size = _hash_file(final)
            if got == sha256:
                if size is not None and size > 0 and got_size != size:
                    raise ArtifactMismatch(
                        f"blob {sha256} has {got_size} bytes, {size} were promised; it was not "
                        "loaded",
                        reason="ARTIFACT_SIZE_MISMATCH",
                    )
                return final
            log.warning("cached artifact is corrupt; downloading again", sha256=sha256)
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        received = 0
        with replaced_atomically(final, durable=True) as fh:
            for chunk in self._download(sha256):
                received += len(chunk)
                if size is not None and size > 0 and received > size:
                    raise ArtifactMismatch(
                        f"blob {sha256} is larger than the {size} bytes promised; it was "
                        "not loaded",
                        reason="ARTIFACT_SIZE_MISMATCH",
                    )
                digest.update(chunk)
                fh.write(chunk)
            if size is not None and size > 0 and received != size:
                raise ArtifactMismatch(
                    f"blob {sha256} has {received} bytes, {size} were promised; it was not loaded",
                    reason="ARTIFACT_SIZE_MISMATCH",
                )
            if digest.hexdigest() != sha256:
                raise ArtifactMismatch(
                    f"the bytes received for blob {sha256} hash to {digest.hexdigest()}; they "
                    "were discarded and not loaded",
                    reason="ARTIFACT_DIGEST_MISMATCH",
                )
        log.info("artifact downloaded", sha256=sha256, bytes=received)
        return final


def blob_downloader(stub: Any, metadata: list[tuple[str, str]], timeout: float) -> Any:
    """A ``download(sha256)`` over ``BlobService.DownloadBlob`` on ``stub``."""
    from modelplane.v1 import blobs_pb2

    def download(sha256: str) -> Iterable[bytes]:
        request = blobs_pb2.DownloadBlobRequest(name=f"blobs/{sha256}")
        for response in stub.DownloadBlob(request, metadata=metadata, timeout=timeout):
            yield response.chunk

    return download
