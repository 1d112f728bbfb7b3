"""A local artifact root that fails answers with a deliberate status, never INTERNAL: no room at
any step is RESOURCE_EXHAUSTED (STORAGE_FULL); a read-only root, or one that refuses the
server's user, FAILED_PRECONDITION (ARTIFACT_STORE_FORBIDDEN); any other error (EIO)
UNAVAILABLE (ARTIFACT_STORE_UNAVAILABLE), as an object store's would be. Nothing is kept:
the upload's temporary file is removed.

No room is made for real in a control-plane process under a small ``RLIMIT_FSIZE`` (EFBIG).
Tests run as root, which a read-only folder does not stop, so the other failures are the OS
calls' own errors raised in place of those calls (the file system is what is simulated)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from controlplane.blobstore import BlobStore
from modelplane import (
    Client,
    FailedPrecondition,
    ModelplaneError,
    ResourceExhausted,
    Unavailable,
)
from modelplane.testing import launch, processes
from tests.controlplane.conftest import RunningControlPlane, start_controlplane

FSIZE_BYTES = 2_000_000


def test_an_upload_past_the_file_size_limit_is_storage_full(tmp_path: Path) -> None:
    launcher = launch.prefix(file_size_limit=FSIZE_BYTES)
    server = processes.controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", launcher=launcher)
    server.start(60)
    try:
        with Client(server.address, principal="alice", retries=1, timeout=30) as c:
            with pytest.raises(ResourceExhausted) as full:
                c.upload_blob(os.urandom(FSIZE_BYTES + 100_000))
            small = c.upload_blob(b"fits")
        assert small.size_bytes == 4
    finally:
        server.stop()
    assert full.value.reason == "STORAGE_FULL"
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []
    assert not [x for x in server.json_lines() if x.get("event") == "unhandled error"]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[RunningControlPlane]:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    yield cp
    cp.handle.stop(0)


def _failing(
    real: Callable[..., Any], under: Path, code: int, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Make ``os.<name>`` fail with ``code`` for paths under ``under`` (its first argument)."""

    def fake(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def _upload(cp: RunningControlPlane) -> tuple[ModelplaneError, list[dict[str, Any]]]:
    with (
        structlog.testing.capture_logs() as logs,
        Client(cp.address, principal="alice", retries=1, timeout=30) as c,
        pytest.raises(ModelplaneError) as refused,
    ):
        c.upload_blob(os.urandom(5000))
    assert not [x for x in logs if x["event"] == "unhandled error"]
    return refused.value, logs


@pytest.mark.parametrize(
    ("call", "code", "status", "reason"),
    [
        ("makedirs", errno.ENOSPC, ResourceExhausted, "STORAGE_FULL"),
        ("makedirs", errno.EROFS, FailedPrecondition, "ARTIFACT_STORE_FORBIDDEN"),
        ("replace", errno.EROFS, FailedPrecondition, "ARTIFACT_STORE_FORBIDDEN"),
        ("replace", errno.EIO, Unavailable, "ARTIFACT_STORE_UNAVAILABLE"),
        ("open", errno.EACCES, FailedPrecondition, "ARTIFACT_STORE_FORBIDDEN"),
        ("open", errno.EROFS, FailedPrecondition, "ARTIFACT_STORE_FORBIDDEN"),
    ],
)
def test_an_artifact_root_that_fails_is_answered_deliberately(
    plane: RunningControlPlane,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
    status: type[ModelplaneError],
    reason: str,
) -> None:
    blobs = plane.artifact_root / "blobs" / "sha256"
    # makedirs is reached only for a prefix folder that is not there yet: none are. The
    # temporary file is opened, and moved from, under tmp/.
    under = plane.artifact_root / ("blobs" if call == "makedirs" else "tmp")
    _failing(getattr(os, call), under, code, monkeypatch, call)
    error, logs = _upload(plane)
    assert isinstance(error, status), error
    assert error.reason == reason
    if status is not ResourceExhausted:
        assert str(plane.artifact_root) in str(error) and os.strerror(code) in str(error)
    warned = [x for x in logs if x["event"] == "artifact root failed"]
    assert warned and warned[0]["log_level"] == "warning"
    monkeypatch.undo()
    assert list((plane.artifact_root / "tmp").iterdir()) == []
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


def test_a_temporary_file_that_cannot_be_removed_does_not_change_the_answer(
    plane: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole root turned read-only after the upload began: the move fails, and so does
    # removing the temporary file; the caller is told why, and the file is left to a sweep.
    _failing(os.replace, plane.artifact_root, errno.EROFS, monkeypatch, "replace")
    _failing(os.unlink, plane.artifact_root, errno.EROFS, monkeypatch, "unlink")
    error, logs = _upload(plane)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "ARTIFACT_STORE_FORBIDDEN"
    assert any(x["event"] == "cannot remove an upload's temporary file" for x in logs)


def test_a_blob_that_cannot_be_read_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore.open(tmp_path / "art", 1 << 20)
    sha = store.put_bytes(b"stored")
    store.recent.take(sha)

    def eio(*_: Any, **__: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("builtins.open", eio)
    with pytest.raises(Unavailable) as down:
        store.read_bytes(sha)
    assert down.value.reason == "ARTIFACT_STORE_UNAVAILABLE"
    with pytest.raises(Unavailable):
        list(store.iter_chunks(sha))
