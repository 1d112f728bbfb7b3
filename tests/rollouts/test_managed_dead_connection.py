"""The path to the control plane goes silent (packets dropped, nothing closed), as when a
node, NAT or load-balancer flow disappears, while new connections work. The sidecar notices
either way: its watchdog after three missed heartbeats (and reconnects on a new connection),
HTTP/2 keepalive when a ping goes unanswered; each is shown here with the other turned off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import controlplane.server
import sidecar.managed.server
from tests.rollouts.harness import register, start_held_canary, wait_for
from tests.rollouts.inprocess import FreezingProxy, client_of, managed, plane  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def proxies() -> Iterator[list[FreezingProxy]]:
    made: list[FreezingProxy] = []
    yield made
    for proxy in made:
        proxy.close()


def _follows_after_a_freeze(
    start_plane: Any, start_sidecar: Any, proxies: list[FreezingProxy], tmp_path: Path
) -> Any:
    cp = start_plane(watch_heartbeat_seconds=0.3)
    client = client_of(cp)
    v = register(client, tmp_path, "m", one={"seed": 0}, two={"seed": 1})
    client.create_deployment("m", model="m", champion_version=v["one"])
    proxy = FreezingProxy(cp.address)
    proxies.append(proxy)
    sc = start_sidecar(proxy.address, "m")
    assert proxy.freeze() >= 1
    start_held_canary(client, "m", v["two"])
    generation = client.get_deployment("m").generation
    wait_for(
        lambda: sc.manager.table.generation == generation and sc.manager.table.candidate,
        120,
        "the sidecar to follow the rollout started after its connections froze",
    )
    return sc


def test_the_watchdog_replaces_a_silent_stream(
    plane: Any,  # noqa: F811
    managed: Any,  # noqa: F811
    proxies: list[FreezingProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sidecar.managed.server, "KEEPALIVE_OPTIONS", [])
    sc = _follows_after_a_freeze(plane, managed, proxies, tmp_path)
    assert sc.watcher.stale >= 1


def test_keepalive_ends_a_dead_connection(
    plane: Any,  # noqa: F811
    managed: Any,  # noqa: F811
    proxies: list[FreezingProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sidecar.managed.watch.STALE_HEARTBEATS", 1e9)
    monkeypatch.setattr(
        sidecar.managed.server,
        "KEEPALIVE_OPTIONS",
        [
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_timeout_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", 1000),
        ],
    )
    sc = _follows_after_a_freeze(plane, managed, proxies, tmp_path)
    assert sc.watcher.stale == 0 and sc.watcher.errors >= 1


def test_the_control_plane_accepts_the_sidecars_pings() -> None:
    """Pings more often than the server accepts end the connection (GOAWAY too_many_pings)."""
    client = dict(sidecar.managed.server.KEEPALIVE_OPTIONS)
    server = dict(controlplane.server.PING_POLICY)
    least = server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_time_ms"] >= least
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
