"""A managed sidecar restarted under the same replica name (the injector names replicas after
their pod, and a container restart keeps the pod): the new process's reports are counted,
not refused as repeats of the old process's."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import infer
from tests.conftest import unique
from tests.rollouts.harness import register, rows, start_held_canary, wait_for

pytestmark = pytest.mark.timeout(240)


def _counted(client: Client, deployment: str) -> int:
    return int(client.get_deployment(deployment).rollout.evidence.step_candidate_requests)


def test_a_restarted_replica_reports_are_counted(tmp_path: Path, procs: list[Server]) -> None:
    cp = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    cp.env["MODELPLANE_REPORT_INTERVAL_SECONDS"] = "0.3"
    procs.append(cp.start())
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    v = register(client, tmp_path, model, champion={"seed": 0}, candidate={"seed": 1})
    client.create_deployment(model, model=model, champion_version=v["champion"])
    # A canary step that never completes: every accepted report only adds its candidate
    # requests to the step's count.
    start_held_canary(client, model, v["candidate"])
    x = rows(200)

    def serve_a_while(name: str, seed: int) -> None:
        sc = sidecar(tmp_path, cp.address, model, name=name, extra=("--replica", "pod-a"))
        procs.append(sc.start())
        before = _counted(client, model)
        with grpc.insecure_channel(sc.address) as channel:
            stub = pbg.GRPCInferenceServiceStub(channel)
            answers = [
                infer(stub, model, x[i], routing_key=f"{seed}-{i}").model_version
                for i in range(len(x))
            ]
        sent = answers.count(str(v["candidate"]))
        assert sent > 0, answers
        wait_for(
            lambda: _counted(client, model) - before >= sent,
            30,
            f"{name}'s {sent} candidate requests to be counted (from {before})",
        )
        # Go on reporting (empty windows) for a while, as a process that lives longer does:
        # more numbers used that a restart starting over would repeat.
        time.sleep(3)
        sc.stop()

    serve_a_while("first", 1)
    serve_a_while("restarted", 2)
