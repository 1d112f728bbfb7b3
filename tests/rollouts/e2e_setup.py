"""The set-up the end-to-end rollout tests share: a real control plane (a process,
killable) with a registered model, a deployment and two managed sidecar replicas."""

from __future__ import annotations

from pathlib import Path

from modelplane import Client
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.harness import register

# Latency on two shared cores is too noisy for the default p99 guard in tests that are not
# about it: the walks that must succeed guard on errors only.
ERRORS_ONLY = ["candidate.error_rate <= champion.error_rate + 0.01"]


def deployment_now(client: Client, deployment: str) -> dp.Deployment:
    return client.get_deployment(deployment)


def rollout_ended(client: Client, deployment: str) -> dp.Deployment | None:
    d = deployment_now(client, deployment)
    final = (dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED)
    return d if d.rollout.state in final else None


def set_up(
    tmp_path: Path, procs: list[Server], db_url: str, **versions: object
) -> tuple[Server, Client, str, dict[str, int], list[Server]]:
    cp = controlplane(tmp_path, db_url).start()
    procs.append(cp)
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    numbers = register(client, tmp_path, model, **versions)
    client.create_deployment(model, model=model, champion_version=numbers["champion"])
    sidecars = [sidecar(tmp_path, cp.address, model, name=f"sc{i}").start() for i in range(2)]
    procs.extend(sidecars)
    return cp, client, model, numbers, sidecars
