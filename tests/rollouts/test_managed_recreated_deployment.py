"""A deployment deleted and created again under the same name is another deployment: its
generations start over at 1, its states carry another create_time, and a sidecar that
followed the old one follows the new one at once (it used to drop every state of the new one,
whose generations were below the old one's, until it restarted)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.rollouts.hooks import HookRunner
from controlplane.rollouts.notifier import GenerationHub
from controlplane.services.deployments import DeploymentService
from controlplane.store import Store
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.traffic import infer
from modelplane.v1 import deployments_pb2 as dpb
from modelplane.v1 import deployments_pb2_grpc
from tests.rollouts.harness import register, rows, start_held_canary, wait_for
from tests.rollouts.inprocess import client_of, managed, plane  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def _served_by(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return str(infer(pbg.GRPCInferenceServiceStub(channel), "m", rows(1)[0]).model_version)


def test_a_sidecar_follows_a_deployment_created_again(
    plane: Any,  # noqa: F811
    managed: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = plane()
    client = client_of(cp)
    v = register(client, tmp_path, "m", one={"seed": 0}, two={"seed": 1})
    client.create_deployment("m", model="m", champion_version=v["one"])
    sc = managed(cp.address, "m")
    start_held_canary(client, "m", v["two"])
    client.abort_rollout("m")
    wait_for(lambda: sc.manager.table.generation == 3, 30, "the sidecar to apply generation 3")
    assert _served_by(sc.port) == str(v["one"])
    client.delete_deployment("m")
    client.create_deployment("m", model="m", champion_version=v["two"])
    assert client.get_deployment("m").generation == 1
    wait_for(
        lambda: sc.manager.table.champion.number == v["two"],
        30,
        "the sidecar to serve the new deployment's champion",
    )
    assert sc.manager.table.generation == 1
    assert _served_by(sc.port) == str(v["two"])


def test_the_watch_sends_a_deployment_created_again_at_once(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Deleted and created again between two looks at the store, with the same generation:
    the stream sends the new state at once rather than with the next heartbeat."""
    cp = plane()
    client = client_of(cp)
    v = register(client, tmp_path, "m", one={"seed": 0}, two={"seed": 1})
    client.create_deployment("m", model="m", champion_version=v["one"])
    # A service of its own on the same database, whose watch the test steps through.
    store = Store.open(cp.db_url, migrate=False)
    hub = GenerationHub()
    service = DeploymentService(store, hub, HookRunner({}, 1.0), heartbeat=3600.0)
    states = service.watch("deployments/m")
    first = next(states)
    assert first.generation == 1 and first.champion_version == v["one"]
    assert first.create_time is not None and first.heartbeat_seconds == 3600.0
    client.delete_deployment("m")
    client.create_deployment("m", model="m", champion_version=v["two"])
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(next(states)), daemon=True)
    reader.start()
    hub.changed("m")
    reader.join(30)
    hub.close()
    reader.join(5)
    store.close()
    assert got, "the watch did not send the deployment created again"
    (second,) = got
    assert second.generation == 1 and second.champion_version == v["two"]
    assert second.create_time is not None and second.create_time != first.create_time


def test_watched_states_carry_create_time_and_heartbeat(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = plane(watch_heartbeat_seconds=0.5)
    client = client_of(cp)
    v = register(client, tmp_path, "m", one={"seed": 0})
    created = client.create_deployment("m", model="m", champion_version=v["one"])
    with grpc.insecure_channel(cp.address) as channel:
        stub = deployments_pb2_grpc.DeploymentServiceStub(channel)
        call = stub.WatchDeployment(
            dpb.WatchDeploymentRequest(name="deployments/m", replica="r"),
            metadata=[("x-modelplane-principal", "sidecar-m")],
            timeout=30,
        )
        state = next(iter(call))
        call.cancel()
    assert state.heartbeat_interval.ToTimedelta().total_seconds() == 0.5
    assert state.HasField("create_time")
    assert state.create_time == created.create_time
