"""A managed sidecar's observer hub never drops records, with or without a prediction log:
when the observer falls behind, requests wait for room, and the window reports still count
every request answered."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import structlog
from control_plane_double import FakeControlPlane, state
from sidecar_helpers import hold_observer, managed_request, stub

import sidecar.managed.server as managed_server
from sidecar.observers import ObserverHub

NAME = "fraud"
CAPACITY = 20


def _wait(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_requests_wait_for_a_slow_observer_rather_than_vanish_from_the_reports(
    managed: Any, plane: FakeControlPlane, artifacts: Any, monkeypatch: Any
) -> None:
    hubs: list[ObserverHub] = []

    def small_hub(*args: Any, **kwargs: Any) -> ObserverHub:
        hub = functools.partial(ObserverHub, capacity=CAPACITY)(*args, **kwargs)
        hubs.append(hub)
        return hub

    monkeypatch.setattr(managed_server, "ObserverHub", small_hub)
    versions = plane.versions(artifacts, 1)
    h = managed()  # no prediction log
    plane.push(state(NAME, 1, versions, 1, interval_s=0.3))
    assert h.wait_ready(60)
    assert hubs
    release = hold_observer(h.observer, monkeypatch)
    n = 5 * CAPACITY
    answered: list[str] = []
    s = stub(h.port)

    def send() -> None:
        for i in range(n):
            answered.append(s.ModelInfer(managed_request(NAME, id=f"r{i}")).id)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # The buffer fills while the observer is held; the sender then waits for room.
        assert _wait(lambda: len(hubs[0]._buffer) >= CAPACITY or not sender.is_alive())
    finally:
        release.set()
    sender.join(60)
    assert len(answered) == n

    def reported() -> int:
        return sum(a.requests for r in list(plane.reports) for a in r.arms)

    _wait(lambda: reported() >= n, timeout=15)
    assert reported() == n
    assert hubs[0].dropped == 0
    assert h.observer.late == 0


def test_a_lossy_hub_warns_when_it_drops_records(monkeypatch: Any) -> None:
    held = threading.Event()

    class Blocked:
        def on_records(self, records: Any) -> None:
            held.wait(10)

    hub = ObserverHub([Blocked()], capacity=2, linger=0)
    hub.start()
    try:
        with structlog.testing.capture_logs() as logs:
            for i in range(20):
                hub.publish(i)  # type: ignore[arg-type]
        assert hub.dropped > 0
        warnings = [e for e in logs if e["event"] == "observers fell behind; records dropped"]
        # Rate-limited: one warning for a burst of drops.
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
    finally:
        held.set()
        hub.close()


def test_an_id_less_request_gets_no_id_when_nothing_records_it(
    managed: Any, plane: FakeControlPlane, artifacts: Any
) -> None:
    # The hub waits for room whatever records follow; ids are still given only when the
    # label index or a prediction log records requests.
    versions = plane.versions(artifacts, 1)
    h = managed(label_index_rows=0)
    plane.push(state(NAME, 1, versions, 1))
    assert h.wait_ready(60)
    assert stub(h.port).ModelInfer(managed_request(NAME)).id == ""
