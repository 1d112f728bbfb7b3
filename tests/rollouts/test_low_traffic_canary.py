"""End to end at low traffic: a real control plane and a real managed sidecar (processes) with
a few requests a second, so that no single report window holds the 20 requests a guard needs.
A candidate failing every request must be rolled back, never advanced or promoted; a healthy
one must still be promoted, each step on guards evaluated over the whole step."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.onnx_models import faulty_classifier
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import infer
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.harness import FEATURES, register, rows, wait_for

pytestmark = pytest.mark.timeout(240)

GUARD = "candidate.error_rate <= champion.error_rate + 0.01"
ENDED = (dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED)


class Trickle:
    """About ``rate`` requests a second, each with its own routing key, counted by answer."""

    def __init__(self, address: str, model: str, rate: float = 4.0) -> None:
        self.stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        self.model = model
        self.pause = 1.0 / rate
        self.answers: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        data = rows(1000, seed=7)
        n = 0
        while not self._stop.wait(self.pause):
            try:
                got = infer(self.stub, self.model, data[n % len(data)], routing_key=f"user{n}")
                self.answers[got.model_version] += 1
            except grpc.RpcError as exc:
                self.answers["!" + exc.code().name] += 1
            n += 1

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _canary(tmp_path: Path, procs: list[Server], candidate: object) -> tuple[Client, str, dict]:
    cp = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}").start()
    procs.append(cp)
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    v = register(client, tmp_path, model, champion={"seed": 0}, candidate=candidate)
    client.create_deployment(model, model=model, champion_version=v["champion"])
    procs.append(sidecar(tmp_path, cp.address, model, name="sc0").start())
    return client, model, v


def _ended(client: Client, model: str) -> dp.Deployment | None:
    d = client.get_deployment(model)
    return d if d.rollout.state in ENDED else None


def _start(client: Client, model: str, version: int) -> None:
    client.start_rollout(
        model,
        version,
        strategy="canary",
        steps=[50, 100],
        step_duration=2,
        min_requests=10,
        guards=[GUARD],
    )


def test_failing_candidate_at_low_traffic_is_rolled_back_never_advanced(
    tmp_path: Path, procs: list[Server]
) -> None:
    client, model, v = _canary(tmp_path, procs, faulty_classifier(FEATURES))
    with Trickle(procs[1].address, model) as load:
        wait_for(lambda: load.answers[str(v["champion"])] >= 4, 30, "champion traffic")
        _start(client, model, v["candidate"])
        done = wait_for(lambda: _ended(client, model), 90, "the canary to end")
    assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK, done.rollout.reason
    assert done.champion_version == v["champion"]
    assert GUARD in done.rollout.reason
    actions = [e.action for e in client.list_rollout_events(model)]
    assert "advanced" not in actions and "promoted" not in actions, actions
    assert load.answers["!INVALID_ARGUMENT"] > 0


def test_healthy_candidate_at_low_traffic_is_promoted_on_evaluated_guards(
    tmp_path: Path, procs: list[Server]
) -> None:
    client, model, v = _canary(tmp_path, procs, {"seed": 1})
    with Trickle(procs[1].address, model) as load:
        wait_for(lambda: load.answers[str(v["champion"])] >= 4, 30, "champion traffic")
        _start(client, model, v["candidate"])
        done = wait_for(lambda: _ended(client, model), 120, "the canary to end")
        time.sleep(0.5)
    assert done.rollout.state == dp.ROLLOUT_STATE_PROMOTED, done.rollout.reason
    assert done.champion_version == v["candidate"]
    moves = [e for e in client.list_rollout_events(model) if e.action in ("advanced", "promoted")]
    assert [e.action for e in moves] == ["promoted", "advanced"]
    for e in moves:
        assert [(g.expression, g.passed, g.error) for g in e.evidence.guards] == [
            (GUARD, True, "")
        ], e.reason
    assert set(load.answers) <= {str(v["champion"]), str(v["candidate"])}, load.answers
