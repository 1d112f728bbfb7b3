"""Requests that used to reach the caller as INTERNAL: an upload to blob storage with no room
left (a real control-plane process whose files may not grow past 2 MiB, so writes fail with
EFBIG as on a full disk) is RESOURCE_EXHAUSTED (STORAGE_FULL), stores nothing and the server
keeps serving; ListOperations with a target PostgreSQL text cannot hold, and WaitOperation with
a timeout past timedelta's range, are answered like any other such request."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument, NotFound, ResourceExhausted
from modelplane.testing.processes import controlplane
from modelplane.v1 import operations_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

pytestmark = pytest.mark.timeout(120)

LIMIT = 2 * 1024 * 1024


def test_an_upload_with_no_room_left_is_resource_exhausted(tmp_path: Path) -> None:
    server = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    server.argv = ["prlimit", f"--fsize={LIMIT}", "--", *server.argv]
    server.start()
    try:
        with Client(server.address, principal="alice", timeout=30) as c:
            with pytest.raises(ResourceExhausted) as err:
                c.upload_blob(os.urandom(LIMIT + 512 * 1024))
            assert err.value.reason == "STORAGE_FULL", err.value
            assert "no room" in err.value.message
            uploads = tmp_path / "artifacts"
            left = [p for p in uploads.rglob("*") if p.is_file() and p.stat().st_size > LIMIT // 2]
            assert left == []
            # The server keeps serving uploads that fit.
            small = os.urandom(1024)
            assert c.upload_blob(small).size_bytes == len(small)
    finally:
        server.stop()


def test_operation_requests_the_database_cannot_take_are_refused(
    controlplane_any: RunningControlPlane,
) -> None:
    with controlplane_any.client() as c:
        with pytest.raises(InvalidArgument) as err:
            c.list_operations(target="models/m\x00/versions/1")
        assert "target" in err.value.message and "control character" in err.value.message
        # (The PostgreSQL database is shared with other tests: a model no other test names.)
        assert c.list_operations(target=f"models/{unique()}/versions/1").operations == []
        for seconds in (2**62, -(2**62)):
            request = operations_pb2.WaitOperationRequest(name="operations/nope")
            request.timeout.seconds = seconds
            with pytest.raises(NotFound):
                c._call(c.operations.WaitOperation, request)
