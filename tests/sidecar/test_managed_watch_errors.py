"""What a managed sidecar logs when its watch fails: before any state it says it is not ready
(there is no last state to serve); an address that is no Modelplane control plane (a gRPC
server without DeploymentService: UNIMPLEMENTED), a deployment that does not exist, a name the
control plane refuses, and refused credentials are logged as errors saying what to fix, and
retried all the same."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from control_plane_double import FakeControlPlane, state
from real_plane import RealPlane, real_plane  # noqa: F401
from sidecar_helpers import managed_sidecars, until

NAME = "fraud"
NOT_READY = "control plane watch failed before a desired state could be served"
INTERRUPTED = "control plane watch interrupted; serving the last state"


def _watch_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("deployment") == f"deployments/{NAME}" and "code" in e]


def test_an_address_that_is_no_control_plane_is_named_in_an_error(tmp_path: Path) -> None:
    # A real gRPC server serving no Modelplane service (as another service's port would).
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        with structlog.testing.capture_logs() as logs, managed_sidecars(address, tmp_path) as m:
            handle = m()
            until(lambda: handle.watcher.errors >= 3)
            assert not handle.manager.ready
    finally:
        server.stop(0)
    failures = _watch_logs(logs)
    assert failures
    for event in failures:
        assert event["log_level"] == "error"
        assert event["code"] == "UNIMPLEMENTED"
        assert event["event"].startswith(f"{address} is not a Modelplane control plane")
        assert "--control-plane" in event["event"] and "retrying" in event["event"]
        assert event["control_plane"] == address
        assert event["serving"] == "nothing: the sidecar is not ready"
    assert not any(str(e["event"]).startswith(INTERRUPTED) for e in logs)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (grpc.StatusCode.NOT_FOUND, "has no deployment deployments/fraud"),
        (grpc.StatusCode.INVALID_ARGUMENT, "fix --deployment"),
        (grpc.StatusCode.PERMISSION_DENIED, "a token with the sidecar role"),
        (grpc.StatusCode.UNAUTHENTICATED, "a valid token"),
    ],
)
def test_a_refusal_to_fix_is_logged_as_an_error_and_retried(
    managed: Any, plane: FakeControlPlane, artifacts: dict, code: grpc.StatusCode, says: str
) -> None:
    plane.refuse_watch = code
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        until(lambda: handle.watcher.errors >= 2)
        assert not handle.manager.ready
        # Fixed on the control plane's side: the sidecar, still retrying, follows at once.
        plane.refuse_watch = None
        assert handle.wait_ready(60)
    failures = _watch_logs(logs)
    assert len(failures) >= 2
    for event in failures:
        assert event["log_level"] == "error"
        assert event["code"] == code.name
        assert says in event["event"]
        assert f"the control plane at {plane.address}" in event["event"]
        assert event["serving"] == "nothing: the sidecar is not ready"


def test_the_log_says_whether_a_state_serves_while_the_watch_is_down(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.refuse_watch = grpc.StatusCode.UNAVAILABLE
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        until(lambda: handle.watcher.errors >= 2)
        before = _watch_logs(logs)
        plane.refuse_watch = None
        assert handle.wait_ready(60)
        errors = handle.watcher.errors
        plane.break_watch()
        until(lambda: handle.watcher.errors > errors)
        after = _watch_logs(logs)[len(before) :]
    assert before and after
    for event in before:
        assert event["log_level"] == "warning" and event["code"] == "UNAVAILABLE"
        assert event["event"].startswith(NOT_READY)
        assert "the sidecar is not ready" in event["event"]
    for event in after:
        assert event["log_level"] == "warning" and event["code"] == "UNAVAILABLE"
        assert event["event"].startswith(INTERRUPTED)


def test_a_state_that_arrived_but_cannot_serve_is_not_called_served(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    """A state arrived, but its champion's artifact is corrupt: nothing serves, and a watch
    that fails then says the sidecar is not ready rather than that it serves the last state."""
    versions = plane.versions(artifacts, 1)
    plane.corrupt.add(versions[1][0])
    plane.push(state(NAME, 1, versions, champion=1))
    with structlog.testing.capture_logs() as logs:
        handle = managed()
        until(lambda: handle.watcher.states >= 1)
        errors = handle.watcher.errors
        plane.break_watch()
        until(lambda: handle.watcher.errors > errors)
        assert not handle.manager.ready
    failures = _watch_logs(logs)
    assert failures
    for event in failures:
        assert event["event"].startswith(NOT_READY), event["event"]


def test_a_deployment_missing_on_a_real_control_plane_is_named_until_created(
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict,
    tmp_path: Path,
) -> None:
    real_plane.register({1: artifacts[1]})
    with (
        structlog.testing.capture_logs() as logs,
        managed_sidecars(real_plane.address, tmp_path) as m,
    ):
        handle = m()
        until(lambda: handle.watcher.errors >= 2)
        assert not handle.manager.ready
        real_plane.client.create_deployment(NAME, model=NAME, champion_version=1)
        assert handle.wait_ready(60)
    failures = [e for e in _watch_logs(logs) if e["code"] == "NOT_FOUND"]
    assert failures
    for event in failures:
        assert event["log_level"] == "error"
        assert event["event"].startswith(
            f"the control plane at {real_plane.address} has no deployment deployments/{NAME}"
        )
