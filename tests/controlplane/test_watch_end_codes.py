"""How a WatchDeployment stream ends: never with OK, which gRPC clients (Go's io.EOF) read as
"done, nothing more will come". A deleted deployment ends it NOT_FOUND (stop watching), a
server that stops UNAVAILABLE (watch again), and a deployment deleted and created again for
another model ABORTED (watch again, access checked anew)."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.rollouts.hooks import HookRunner
from controlplane.rollouts.notifier import GenerationHub
from controlplane.services.deployments import DeploymentService
from controlplane.store import Store
from modelplane import Client
from modelplane.errors import Aborted, Unavailable, error_info
from modelplane.testing import processes
from modelplane.v1 import deployments_pb2 as dpb
from modelplane.v1 import deployments_pb2_grpc
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import deployed, register_versions

pytestmark = pytest.mark.timeout(180)


def _watch(address: str, deployment: str, out: queue.Queue[Any]) -> threading.Thread:
    """A thread reading the deployment's watch with a plain stub (as any gRPC client does):
    each state, then ``("end", code, reason, details)``."""

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            call = deployments_pb2_grpc.DeploymentServiceStub(channel).WatchDeployment(
                dpb.WatchDeploymentRequest(name=f"deployments/{deployment}", replica="r"),
                metadata=[("x-modelplane-principal", "watcher")],
                timeout=120,
            )
            try:
                for state in call:
                    out.put(state)
                out.put(("end", grpc.StatusCode.OK, "", ""))
            except grpc.RpcError as exc:
                info = error_info(exc)
                out.put(("end", exc.code(), info.reason if info else "", exc.details()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _end(out: queue.Queue[Any]) -> tuple[Any, ...]:
    """The stream's end, after any states."""
    while True:
        item = out.get(timeout=60)
        if isinstance(item, tuple):
            return item


def test_a_deleted_deployment_ends_its_watch_not_found(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        dep, _ = deployed(c, tmp_path)
        out: queue.Queue[Any] = queue.Queue()
        reader = _watch(controlplane.address, dep, out)
        assert out.get(timeout=30).generation == 1
        c.delete_deployment(dep)
        _, code, reason, details = _end(out)
        reader.join(10)
    assert code == grpc.StatusCode.NOT_FOUND, details
    assert reason == "DEPLOYMENT_NOT_FOUND"
    assert f"deployments/{dep} was deleted" in details


@pytest.fixture
def served(tmp_path: Path) -> Iterator[processes.Server]:
    """``modelplane controlplane serve`` in a subprocess."""
    server = processes.controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}").start()
    try:
        yield server
    finally:
        server.kill()


def test_sigterm_ends_open_watches_unavailable(served: processes.Server, tmp_path: Path) -> None:
    proc, address = served.proc, served.address
    assert proc is not None
    with Client(address, principal="alice", timeout=30) as c:
        dep, _ = deployed(c, tmp_path)
    out: queue.Queue[Any] = queue.Queue()
    reader = _watch(address, dep, out)
    assert out.get(timeout=30).generation == 1
    proc.send_signal(signal.SIGTERM)
    _, code, reason, details = _end(out)
    reader.join(10)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert reason == "SERVER_SHUTTING_DOWN"
    assert "shutting down" in details and "watch" in details
    assert proc.wait(timeout=30) == 0, served.tail()


def test_a_deployment_created_again_for_another_model_ends_its_watch_aborted(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    # Deleted and created again between two looks at the store: the watch never sees it
    # missing. A service of its own on the same database, whose watch the test steps through.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with controlplane.client() as c:
        first_model, first = register_versions(c, tmp_path / "a", 1)
        other_model, other = register_versions(c, tmp_path / "b", 1)
        c.create_deployment("shared", model=first_model, champion_version=first[0])
        store = Store.open(controlplane.db_url, migrate=False)
        hub = GenerationHub()
        service = DeploymentService(store, hub, HookRunner({}, 1.0), heartbeat=3600.0)
        try:
            states = service.watch("deployments/shared")
            assert next(states).model_id == first_model
            c.delete_deployment("shared")
            c.create_deployment("shared", model=other_model, champion_version=other[0])
            hub.changed("shared")
            with pytest.raises(Aborted) as ended:
                next(states)
        finally:
            hub.close()
            store.close()
    assert ended.value.reason == "DEPLOYMENT_RECREATED"
    assert "watch it again" in ended.value.message
    assert other_model not in ended.value.message


def test_a_stopping_service_ends_its_watch_unavailable(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """Also when the server stopped before the watch's first wait."""
    with controlplane.client() as c:
        dep, _ = deployed(c, tmp_path)
    store = Store.open(controlplane.db_url, migrate=False)
    hub = GenerationHub()
    service = DeploymentService(store, hub, HookRunner({}, 1.0), heartbeat=3600.0)
    try:
        states = service.watch(f"deployments/{dep}")
        assert next(states).generation == 1
        hub.close()
        with pytest.raises(Unavailable) as ended:
            next(states)
    finally:
        store.close()
    assert ended.value.reason == "SERVER_SHUTTING_DOWN"
