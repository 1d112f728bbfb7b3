"""End to end: a control plane killed (SIGKILL) in the middle of a canary step and restarted on
the same address and database, a real managed sidecar queuing its windows meanwhile, and a
candidate that fails every request it takes during the outage, at a few requests a second (no
single window holds the 20 requests a guard needs). The sidecar's backlog is sent oldest first
after the step's duration has passed: its first window must not complete the step before the
rest arrive, so the failures are judged with the step and the candidate is rolled back."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelplane import Client
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.onnx_models import faulty_classifier
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import infer
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.harness import FEATURES, register, wait_for

pytestmark = pytest.mark.timeout(300)

GUARD = "candidate.error_rate <= champion.error_rate + 0.01"
ENDED = (dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED)
STEP_SECONDS = 15


class Traffic:
    """About 20 requests a second; while :attr:`bad` is set, rows the faulty candidate fails
    on (the champion answers them). Answers counted by (bad, version or status code)."""

    def __init__(self, address: str, model: str) -> None:
        self.stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        self.model = model
        self.bad = threading.Event()
        self.answers: collections.Counter[tuple[bool, str]] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(3)
        n = 0
        while not self._stop.wait(0.05):
            row = rng.standard_normal(FEATURES).astype(np.float32)
            bad = self.bad.is_set()
            row[0] = 1.0 if bad else 0.0  # the faulty candidate fails where |x0| >= 0.03
            try:
                got = infer(self.stub, self.model, row, routing_key=f"user{n}").model_version
            except grpc.RpcError as exc:
                got = "!" + exc.code().name
            self.answers[(bad, got)] += 1
            n += 1

    def failed(self) -> int:
        """Requests that failed while the rows were bad."""
        return sum(n for (bad, got), n in self.answers.items() if bad and got.startswith("!"))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


def _moved(client: Client, model: str) -> dp.Deployment | None:
    """The deployment once its rollout ended or left its first step."""
    d = client.get_deployment(model)
    return d if d.rollout.state in ENDED or d.rollout.step > 0 else None


def test_a_candidate_failing_during_an_outage_is_rolled_back_from_the_backlog(
    tmp_path: Path, procs: list[Server]
) -> None:
    cp = controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        env={"MODELPLANE_REPORT_INTERVAL_SECONDS": "0.5"},
    )
    procs.append(cp.start())
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    v = register(client, tmp_path, model, champion={"seed": 0}, candidate=faulty_classifier())
    client.create_deployment(model, model=model, champion_version=v["champion"])
    procs.append(sidecar(tmp_path, cp.address, model, name="sc0").start())
    champion = str(v["champion"])
    with Traffic(procs[-1].address, model) as load:
        wait_for(lambda: load.answers[(False, champion)] >= 4, 30, "champion traffic")
        client.start_rollout(
            model,
            v["candidate"],
            strategy="canary",
            steps=[50, 100],
            step_duration=STEP_SECONDS,
            min_requests=30,
            guards=[GUARD],
        )
        started = time.monotonic()
        # Healthy until the step has counted its requests: the step now waits only for its
        # time, which runs out during the outage.
        wait_for(
            lambda: client.get_deployment(model).rollout.evidence.step_candidate_requests >= 30,
            60,
            "the step's requests",
        )
        step = client.get_deployment(model).rollout
        assert (step.state, step.step) == (dp.ROLLOUT_STATE_RUNNING, 0), step.reason
        cp.kill()  # the outage: the sidecar queues its windows
        time.sleep(1.5)  # the oldest queued windows are healthy, as the step so far
        load.bad.set()
        wait_for(
            lambda: load.failed() >= 40 and time.monotonic() - started > STEP_SECONDS + 1,
            120,
            "the candidate to fail requests during the outage, past the step's duration",
        )
        load.bad.clear()
        cp.start()  # the same address and database; the sidecar's backlog goes out
        done = wait_for(lambda: _moved(client, model), 120, "the canary to end or move on")
    assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK, done.rollout.reason
    assert done.rollout.reason.startswith(f"guard failed over the step: {GUARD}")
    assert done.champion_version == v["champion"]
    actions = [e.action for e in client.list_rollout_events(model)]
    assert "advanced" not in actions and "promoted" not in actions, actions
