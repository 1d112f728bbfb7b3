"""Drift is judged over windows of at least ``min_rows`` rows summed across reports: a
deployment whose replicas each report a few rows per interval still gets its drift event,
once enough rows arrived, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from modelplane import Client
from modelplane.testing import onnx_models
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import wait_for
from tests.controlplane.test_deployments_drift import Hook, _drift_arm, _with_baseline
from tests.controlplane.test_deployments_drift import webhook as webhook

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _send(c: Client, name: str, replica: str, seq: int, arm: object, second: int) -> None:
    c.report_window(
        name,
        replica=replica,
        sequence=seq,
        arms=[arm],  # type: ignore[list-item]
        start_time=T0 + timedelta(seconds=second),
        end_time=T0 + timedelta(seconds=second + 2),
    )


def _deployed(c: Client, folder: Path, **thresholds: Any) -> tuple[str, str, int, Any, str]:
    """A model version with a baseline and a deployment of it with ``max_psi`` 0.25 and
    ``thresholds``: (deployment, model, version, profile, baseline digest)."""
    model_id, version, profile = _with_baseline(c, folder)
    sha = c.get_version(model_id, version).baseline.sha256
    name = unique()
    c.create_deployment(name, model=model_id, champion_version=version, max_psi=0.25, **thresholds)
    return name, model_id, version, profile, sha


def _drift_events(c: Client, name: str) -> list[object]:
    return [e for e in c.list_rollout_events(name) if e.action == "drift"]


def test_few_rows_per_report_add_up_to_a_drift_event(
    tmp_path: Path, db_url: str, webhook: str
) -> None:
    cp = start_controlplane(tmp_path, db_url)
    try:
        with cp.client() as c:
            name, _, version, profile, sha = _deployed(
                c, tmp_path, min_rows=200, webhook_url=webhook
            )
            shifted = _drift_arm(version, profile, sha, 1.5, 30)
            # Two replicas, 30 rows a report: six reports hold 180 rows, too few to judge.
            for i in range(6):
                _send(c, name, "ab"[i % 2], i // 2 + 1, shifted, 2 * i)
            assert _drift_events(c, name) == [] and not Hook.received
            # A replica still serving another version adds nothing to the champion's window.
            _send(c, name, "c", 1, _drift_arm(version + 7, profile, sha, 1.5, 500), 12)
            assert _drift_events(c, name) == []
            _send(c, name, "a", 4, shifted, 14)
            event = wait_for(lambda: Hook.received and Hook.received[0], "the webhook")
            part = event["arms"][0]
            assert (part["arm"], part["version"], part["rows"]) == ("champion", version, 210)
            assert part["max_psi"] > 0.25 and part["crossed"]
            assert datetime.fromisoformat(part["window_start_time"]) == T0
            assert datetime.fromisoformat(part["window_end_time"]) == T0 + timedelta(seconds=16)
            assert datetime.fromisoformat(event["window_start_time"]) == T0
            assert len(_drift_events(c, name)) == 1
    finally:
        cp.handle.stop(0)


def test_a_judged_window_closes_and_the_next_starts_empty(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    cp = start_controlplane(tmp_path, f"sqlite:///{db}")

    def open_rows() -> list[tuple[str, int, int]]:
        with sqlite3.connect(db) as con:
            return list(con.execute("SELECT arm, rows, reports FROM drift_windows"))

    try:
        with cp.client() as c:
            name, model_id, version, profile, sha = _deployed(c, tmp_path, min_rows=200)
            calm = _drift_arm(version, profile, sha, 0.0, 120)
            shifted = _drift_arm(version, profile, sha, 1.5, 120)
            _send(c, name, "a", 1, calm, 0)
            assert open_rows() == [("champion", 120, 1)]
            # 240 calm rows: judged, no event, closed.
            _send(c, name, "a", 2, calm, 2)
            assert open_rows() == [] and _drift_events(c, name) == []
            # The shifted rows that follow are judged on their own once they are 200.
            _send(c, name, "a", 3, shifted, 4)
            assert open_rows() == [("champion", 120, 1)] and _drift_events(c, name) == []
            # A repeated report adds nothing.
            _send(c, name, "a", 3, shifted, 4)
            assert open_rows() == [("champion", 120, 1)]
            _send(c, name, "b", 1, shifted, 4)
            assert open_rows() == []
            [event] = _drift_events(c, name)
            assert "max_psi" in event.reason  # type: ignore[attr-defined]
            # Without thresholds no window is kept; deleting the deployment removes its own.
            _send(c, name, "a", 4, calm, 6)
            assert open_rows() == [("champion", 120, 1)]
            c.delete_deployment(name)
            assert open_rows() == []
            other = unique()
            c.create_deployment(other, model=model_id, champion_version=version)
            _send(c, other, "a", 1, shifted, 0)
            assert open_rows() == []
    finally:
        cp.handle.stop(0)


def _second_version(c: Client, model_id: str, folder: Path) -> int:
    onnx = onnx_models.save(onnx_models.mlp(8, (8,)), folder / "m2.onnx")
    v = c.register_version(
        model_id, onnx, datasets={"train": folder / "train.parquet"}, label="target"
    )
    return int(v.version)


def _as(a: Any, arm: str) -> Any:
    out = pb.ArmSummary()
    out.CopyFrom(a)
    out.arm = arm
    return out


def test_windows_restart_with_the_rollout_and_the_thresholds(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    cp = start_controlplane(tmp_path, f"sqlite:///{db}")

    def open_rows(name: str) -> list[tuple[str, int]]:
        with sqlite3.connect(db) as con:
            q = "SELECT arm, rows FROM drift_windows WHERE deployment_id = ? ORDER BY arm"
            return list(con.execute(q, (name,)))

    try:
        with cp.client() as c:
            name, model_id, v1, profile, sha = _deployed(c, tmp_path)
            v2 = _second_version(c, model_id, tmp_path)
            # A candidate's rows under one rollout do not count toward the next one's.
            c.start_rollout(name, v2, steps=[50], step_duration=3600, min_requests=10**6)
            r1 = c.get_deployment(name).rollout.id
            shifted = _as(_drift_arm(v2, profile, sha, 1.5, 150), "candidate")
            c.report_window(name, replica="a", sequence=1, arms=[shifted], rollout_id=r1)
            assert open_rows(name) == [("candidate", 150)]
            c.rollback_rollout(name, reason="bad")
            c.start_rollout(name, v2, steps=[50], step_duration=3600, min_requests=10**6)
            r2 = c.get_deployment(name).rollout.id
            more = _as(_drift_arm(v2, profile, sha, 1.5, 60), "candidate")
            c.report_window(name, replica="a", sequence=2, arms=[more], rollout_id=r2)
            assert open_rows(name) == [("candidate", 60)] and _drift_events(c, name) == []
            c.abort_rollout(name, reason="done")
            # Thresholds removed drop the windows; set again, they start afresh.
            c.report_window(
                name, replica="a", sequence=3, arms=[_drift_arm(v1, profile, sha, 1.5, 150)]
            )
            assert ("champion", 150) in open_rows(name)
            c.update_deployment(name, drift_thresholds={})
            assert open_rows(name) == []
            c.update_deployment(name, drift_thresholds={"max_psi": 0.25, "min_rows": 200})
            calm = _drift_arm(v1, profile, sha, 0.0, 60)
            c.report_window(name, replica="a", sequence=4, arms=[calm])
            assert open_rows(name) == [("champion", 60)] and _drift_events(c, name) == []
    finally:
        cp.handle.stop(0)


def test_both_digest_spellings_add_up_and_the_event_shows_the_judged_window(
    tmp_path: Path,
) -> None:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        with cp.client() as c:
            name, _, version, profile, sha = _deployed(c, tmp_path, min_rows=200)
            prefixed = _drift_arm(version, profile, sha, 1.5, 150)
            prefixed.drift.baseline_sha256 = "sha256:" + sha
            _send(c, name, "old", 1, prefixed, 0)
            # Seconds later, past the latest-window merge: a replica spelling the digest bare
            # adds to the same window instead of being refused.
            calm = _drift_arm(version, profile, sha, 0.0, 60)
            assert c.report_window(
                name,
                replica="new",
                sequence=1,
                arms=[calm],
                start_time=T0 + timedelta(seconds=600),
                end_time=T0 + timedelta(seconds=602),
            ).accepted
            [event] = _drift_events(c, name)
            judged = event.evidence.champion.drift  # type: ignore[attr-defined]
            assert judged.rows == 210
            assert f"max_psi {judged.max_psi:.4g}" in event.reason  # type: ignore[attr-defined]
    finally:
        cp.handle.stop(0)


def test_the_event_names_the_rollout_its_window_was_counted_under(
    tmp_path: Path,
    webhook: str,
) -> None:
    """A window filled by a replica that applied the rollout and one that had not yet is one
    window of the rollout in progress: the event and its payload name that rollout."""
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        with cp.client() as c:
            name, model_id, v1, profile, sha = _deployed(
                c, tmp_path, min_rows=200, webhook_url=webhook
            )
            v2 = _second_version(c, model_id, tmp_path)
            c.start_rollout(name, v2, steps=[50], step_duration=3600, min_requests=10**6)
            rollout = c.get_deployment(name).rollout.id
            shifted = _drift_arm(v1, profile, sha, 1.5, 150)
            c.report_window(
                name,
                replica="a",
                sequence=1,
                arms=[shifted],
                rollout_id=rollout,
                start_time=T0,
                end_time=T0 + timedelta(seconds=2),
            )
            _send(c, name, "b", 1, _drift_arm(v1, profile, sha, 1.5, 60), 2)
            payload = wait_for(lambda: Hook.received and Hook.received[0], "the webhook")
            [event] = _drift_events(c, name)
            assert payload["rollout_id"] == event.rollout_id == rollout  # type: ignore[attr-defined]
            assert payload["arms"][0]["rows"] == 210
            end = event.evidence.window_end_time.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]
            assert end == T0 + timedelta(seconds=4)
    finally:
        cp.handle.stop(0)
