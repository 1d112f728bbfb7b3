"""A SQLite database file deleted, or replaced by another, while the control plane runs: writes
are refused (FAILED_PRECONDITION) rather than acknowledged into a file that is gone at the next
start, an error is logged, and health says NOT_SERVING; reads are refused alike, and no
empty database is made at the path."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplane import Client, FailedPrecondition, ModelplaneError
from modelplane.testing import processes


def _list_reason(c: Client) -> str:
    """The reason ListModels is refused with; fails the test if it is answered."""
    try:
        list(c.list_models())
    except ModelplaneError as err:
        return err.reason
    raise AssertionError("ListModels was answered from a database file that is gone")


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


@pytest.mark.parametrize(
    ("how", "reason"), [("deleted", "DATABASE_GONE"), ("replaced", "DATABASE_REPLACED")]
)
def test_writes_to_a_database_file_gone_from_under_the_server_are_refused(
    tmp_path: Path, how: str, reason: str
) -> None:
    db = tmp_path / "cp.db"
    server = processes.controlplane(tmp_path, f"sqlite:///{db}").start(60)
    try:
        with Client(server.address, principal="alice", retries=1, timeout=10) as c:
            c.create_model("before")
            if how == "deleted":
                for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                    name.unlink(missing_ok=True)
            else:  # a copy put in its place (a backup restored while the server runs)
                shutil.copyfile(db, tmp_path / "copy.db")
                os.replace(tmp_path / "copy.db", db)
            # Noticed without a write too: the server's own background reads look.
            end = time.monotonic() + 15
            while _health(server.address) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < end, "health still SERVING"
                time.sleep(0.2)
            with pytest.raises(FailedPrecondition) as refused:
                c.create_model("after")
            assert refused.value.reason == reason
            assert "restart the server" in refused.value.message
            # Still refused, and reads alike, however many run at once: before, a read on a
            # new pooled connection made an empty database at the path and failed
            # UNAVAILABLE (no such table) while others answered from the old file.
            with pytest.raises(FailedPrecondition):
                c.create_model("after")
            with ThreadPoolExecutor(12) as pool:
                outcomes = list(pool.map(lambda _: _list_reason(c), range(12)))
            assert outcomes == [reason] * 12
            if how == "deleted":
                assert not db.exists()
        errors = [x for x in server.json_lines() if x.get("level") == "error"]
        assert any("deleted or replaced" in x.get("event", "") for x in errors), server.tail()
    finally:
        server.kill()
