"""Blob downloads: the target appears only whole and checked, even with two downloads to it
at once."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from tests.controlplane.conftest import RunningControlPlane


def test_concurrent_downloads_to_one_target_never_mix(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    blobs = [os.urandom(3 * 1024 * 1024 + i) for i in range(2)]
    with controlplane.client() as c:
        digests = [c.upload_blob(b, "application/octet-stream").sha256 for b in blobs]
        out = tmp_path / "out"
        out.mkdir()
        target = out / "model.bin"
        errors: list[BaseException] = []

        def fetch(sha: str) -> None:
            try:
                c.download_blob(sha, target)
            except BaseException as exc:
                errors.append(exc)

        for _ in range(5):
            threads = [threading.Thread(target=fetch, args=(d,)) for d in digests]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert hashlib.sha256(target.read_bytes()).hexdigest() in digests
        # No temporary file is left behind.
        assert sorted(p.name for p in out.iterdir()) == ["model.bin"]
