"""A managed sidecar's watch against a control plane (the double) that misbehaves as the real
one cannot on demand: a deployment created again while the watch stream stays open (with any
generation, the same as before included), and a watch stream that falls silent."""

from __future__ import annotations

import functools
import urllib.request
from typing import Any

from control_plane_double import FakeControlPlane, state
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import managed_request, stub, until

NAME = "fraud"
_request = functools.partial(managed_request, NAME)


def test_a_deployment_created_again_is_followed_on_an_open_stream(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    versions = plane.versions(artifacts, 1, 2, 3)
    plane.push(state(NAME, 3, versions, champion=1, created_s=1000.0))
    handle = managed()
    assert handle.wait_ready(60)
    s = stub(handle.port)
    assert s.ModelInfer(_request()).model_version == "1"
    # Deleted and created again: generations start over.
    plane.push(state(NAME, 1, versions, champion=2, created_s=2000.0))
    until(lambda: handle.manager.table.champion.number == 2)
    assert handle.manager.table.generation == 1
    assert s.ModelInfer(_request()).model_version == "2"
    # An older generation of the same deployment is still ignored.
    plane.push(state(NAME, 0, versions, champion=1, created_s=2000.0))
    # Created again once more, at the same generation as the one it replaces.
    plane.push(state(NAME, 1, versions, champion=3, created_s=3000.0))
    until(lambda: handle.manager.table.champion.number == 3)
    assert s.ModelInfer(_request()).model_version == "3"
    assert handle.watcher.errors == 0


def test_a_silent_watch_stream_is_replaced(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    versions = plane.versions(artifacts, 1, 2)
    plane.push(state(NAME, 1, versions, champion=1, heartbeat_s=0.2))
    handle = managed(metrics_listen="127.0.0.1:0")
    assert handle.wait_ready(60)
    plane.mute_watch()
    plane.push(state(NAME, 2, versions, champion=2, heartbeat_s=0.2))
    until(lambda: handle.manager.table.champion.number == 2)
    assert handle.watcher.stale >= 1
    assert plane.watchers >= 2
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    reconnects = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "modelplane_sidecar_watch_reconnects_total"
        and sample.labels == {"model": NAME, "reason": "stale"}
    ]
    assert len(reconnects) == 1 and reconnects[0] >= 1


def test_no_watchdog_when_the_control_plane_does_not_announce_its_heartbeat(
    managed: Any, plane: FakeControlPlane, artifacts: dict, monkeypatch: Any
) -> None:
    """A control plane older than DeploymentState.heartbeat_interval repeats the state as
    often as it was configured to, which may be rarer than three default heartbeats: its
    stream is not taken for dead. (Three heartbeats shrunk to half of one here, floored at 1 s,
    so that the stream below, repeated every 2 s, keeps the test short.)"""
    monkeypatch.setattr("sidecar.managed.watch.STALE_HEARTBEATS", 0.1)
    plane.heartbeat = 2.0
    versions = plane.versions(artifacts, 1, 2, 3)
    plane.push(state(NAME, 1, versions, champion=1))
    handle = managed()
    assert handle.wait_ready(60)
    until(lambda: handle.watcher.states >= 3)  # two silences of 2 s each
    plane.push(state(NAME, 2, versions, champion=2))
    until(lambda: handle.manager.table.champion.number == 2)
    assert handle.watcher.stale == 0
    assert handle.watcher.errors == 0
    assert plane.watchers == 1
    # A control plane that announces its heartbeat gets the watchdog again.
    plane.push(state(NAME, 3, versions, champion=2, heartbeat_s=0.2))
    until(lambda: handle.manager.table.generation == 3)
    plane.mute_watch()
    plane.push(state(NAME, 4, versions, champion=3, heartbeat_s=0.2))
    until(lambda: handle.manager.table.champion.number == 3)
    assert handle.watcher.stale >= 1


def test_reports_say_which_deployment_of_the_name_they_were_counted_under(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    versions = plane.versions(artifacts, 1, 2)
    plane.push(state(NAME, 2, versions, champion=1, created_s=1000.0))
    handle = managed()
    assert handle.wait_ready(60)
    s = stub(handle.port)
    s.ModelInfer(_request())

    def reported(created_s: float) -> bool:
        with plane.cond:
            return any(
                r.arms and r.deployment_create_time.ToNanoseconds() == int(created_s * 1e9)
                for r in plane.reports
            )

    until(lambda: reported(1000.0))
    plane.push(state(NAME, 1, versions, champion=2, created_s=2000.0))
    until(lambda: handle.manager.table.champion.number == 2)
    s.ModelInfer(_request())
    until(lambda: reported(2000.0))
    with plane.cond:
        assert all(r.HasField("deployment_create_time") for r in plane.reports)
