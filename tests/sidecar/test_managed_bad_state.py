"""A desired state that cannot be served (check_state refuses it) is logged once and ignored
until a newer one arrives; the manager does not apply it again and again."""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from control_plane_double import FakeControlPlane, state

import sidecar.managed.manager as manager_module

NAME = "fraud"


def test_a_refused_first_state_is_checked_once_and_a_newer_one_is_applied(
    managed: Any, plane: FakeControlPlane, artifacts: Any, monkeypatch: Any
) -> None:
    checked: list[int] = []
    first = threading.Event()
    real = manager_module.check_state

    def counting(desired: Any) -> str | None:
        checked.append(desired.generation)
        first.set()
        return real(desired)

    monkeypatch.setattr(manager_module, "check_state", counting)
    versions = plane.versions(artifacts, 1)
    # Candidate 2 is not among the state's versions.
    bad = state(NAME, 1, versions, 1, candidate=2, percent=10.0, rollout_id="r")
    with structlog.testing.capture_logs() as logs:
        # A logger this process used before is cached with the configuration of then (level
        # warning, no capture): one made now is bound to the capture.
        monkeypatch.setattr(
            manager_module, "log", structlog.get_logger("modelplane.sidecar.managed")
        )
        h = managed()
        plane.push(bad)
        assert first.wait(60)
        # Time enough for thousands of attempts, were the state tried again at once.
        time.sleep(0.5)
        assert not h.manager.ready
        plane.push(state(NAME, 2, versions, 1))
        assert h.wait_ready(60)
    assert checked == [1, 2]
    refusals = [e for e in logs if e["event"] == "ignoring a desired state that cannot be served"]
    assert len(refusals) == 1
    assert h.manager.table.generation == 2
