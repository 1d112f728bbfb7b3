"""A control plane whose deployment goes back to an older generation (its database restored from
a backup, or a failover to a lagging one): a managed sidecar follows it, as a replica that
connects afresh does, and logs it; a lower generation arriving once on an open stream after a
higher one is still ignored, unless the control plane sends it again."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import structlog
from control_plane_double import FakeControlPlane, state
from real_plane import RealPlane, real_plane  # noqa: F401
from sidecar_helpers import managed_sidecars, until

from controlplane.server import start as start_control_plane
from controlplane.settings import ControlPlaneSettings
from modelplane import Client

NAME = "fraud"
WENT_BACK = "the control plane went back to an older generation"
IGNORED = "ignoring a desired state of an older generation"


def _events(logs: list[dict[str, Any]], start: str) -> list[dict[str, Any]]:
    return [e for e in logs if str(e["event"]).startswith(start)]


def test_a_control_plane_restored_from_a_backup_is_followed(
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict,
    tmp_path: Path,
) -> None:
    plane = real_plane
    plane.deploy({1: artifacts[1], 2: artifacts[2], 3: artifacts[3]}, champion=1)
    db = tmp_path / "cp.db"
    backup = tmp_path / "backup.db"
    with structlog.testing.capture_logs() as logs, managed_sidecars(plane.address, tmp_path) as m:
        handle = m()
        assert handle.wait_ready(60)
        backed_up = plane.client.get_deployment(NAME).generation
        source, copy = sqlite3.connect(db), sqlite3.connect(backup)
        source.backup(copy)
        copy.close()
        source.close()
        # A canary of version 2 at 50%, which the backup does not know.
        first_rollout = plane.canary(2, 50.0)
        ahead = plane.client.get_deployment(NAME).generation
        assert ahead > backed_up
        until(lambda: handle.manager.table.generation == ahead, 60)
        assert handle.manager.table.candidate is not None
        # The control plane stops and comes back on its database as the backup had it.
        plane.running.handle.stop(0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, db)
        restored = start_control_plane(
            ControlPlaneSettings(
                listen=plane.address,
                db_url=f"sqlite:///{db}",
                artifact_root=str(tmp_path / "artifacts"),
                grace_seconds=1.0,
                report_interval_seconds=0.3,
            )
        )
        try:
            with Client(plane.address, principal="alice", timeout=30) as client:
                assert client.get_deployment(NAME).generation == backed_up
                until(lambda: handle.manager.table.generation == backed_up, 60)
                table = handle.manager.table
                assert table.candidate is None and table.champion.number == 1
                # The restored control plane moves on: its next generations are followed too,
                # the one numbered like the state the sidecar followed before included.
                second = client.start_rollout(
                    NAME,
                    3,
                    strategy="canary",
                    steps=[30.0, 100.0],
                    step_duration=3600,
                    min_requests=10**6,
                    guards=["candidate.error_rate <= 1"],
                ).rollout.id
                now = client.get_deployment(NAME).generation
                until(lambda: handle.manager.table.rollout_id == second, 60)
                assert handle.manager.table.generation == now
                assert handle.manager.table.candidate.number == 3
                assert second != first_rollout
        finally:
            handle.stop(0)
            restored.stop(0)
    (went_back,) = _events(logs, WENT_BACK)
    assert went_back["log_level"] == "warning"
    assert went_back["generation"] == backed_up
    assert went_back["previous_generation"] == ahead
    assert went_back["new_stream"] is True
    assert "restored" in went_back["event"]


def _send(plane: FakeControlPlane, handle: Any, desired: Any) -> None:
    """Push ``desired`` and wait until the sidecar received it (pushes in quick succession
    would otherwise reach the stream as the last one alone)."""
    received = handle.watcher.states
    plane.push(desired)
    until(lambda: handle.watcher.states > received)


def test_a_lower_generation_on_an_open_stream_is_ignored_unless_sent_again(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.heartbeat = 3600.0  # nothing is repeated but what the test pushes
    versions = plane.versions(artifacts, 1, 2)
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        plane.push(state(NAME, 2, versions, champion=2, created_s=1000.0))
        assert handle.wait_ready(60)
        # Once on the open stream: taken for out of date, ignored (and logged).
        _send(plane, handle, state(NAME, 1, versions, champion=1, created_s=1000.0))
        until(lambda: len(_events(logs, IGNORED)) == 1)
        assert handle.manager.table.generation == 2
        assert handle.manager.table.champion.number == 2
        # Sent again with nothing in between: the control plane holds it now.
        plane.push(state(NAME, 1, versions, champion=1, created_s=1000.0))
        until(lambda: handle.manager.table.champion.number == 1)
        assert handle.manager.table.generation == 1
    assert len(_events(logs, IGNORED)) == 1
    (went_back,) = _events(logs, WENT_BACK)
    assert went_back["generation"] == 1 and went_back["previous_generation"] == 2
    assert went_back["new_stream"] is False
    assert handle.watcher.errors == 0


def test_a_lower_generation_once_between_higher_ones_is_ignored(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.heartbeat = 3600.0
    versions = plane.versions(artifacts, 1, 2, 3)
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        plane.push(state(NAME, 2, versions, champion=2, created_s=1000.0))
        assert handle.wait_ready(60)
        _send(plane, handle, state(NAME, 1, versions, champion=1, created_s=1000.0))
        _send(plane, handle, state(NAME, 2, versions, champion=2, created_s=1000.0))
        _send(plane, handle, state(NAME, 1, versions, champion=1, created_s=1000.0))
        until(lambda: len(_events(logs, IGNORED)) == 2)
        _send(plane, handle, state(NAME, 3, versions, champion=3, created_s=1000.0))
        until(lambda: handle.manager.table.champion.number == 3)
    assert not _events(logs, WENT_BACK)
    assert all(e["generation"] != 1 for e in logs if e["event"] == "desired state applied")


def test_a_lower_generation_first_on_a_new_stream_is_followed_at_once(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.heartbeat = 3600.0
    versions = plane.versions(artifacts, 1, 2)
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        plane.push(state(NAME, 2, versions, champion=2, created_s=1000.0))
        assert handle.wait_ready(60)
        # The open stream falls silent, and the one opened next starts with generation 1.
        plane.mute_watch()
        plane.push(state(NAME, 1, versions, champion=1, created_s=1000.0))
        plane.break_watch()
        until(lambda: handle.manager.table.champion.number == 1)
        assert handle.manager.table.generation == 1
    assert not _events(logs, IGNORED)
    (went_back,) = _events(logs, WENT_BACK)
    assert went_back["new_stream"] is True
