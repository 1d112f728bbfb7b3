"""End to end: a real control plane and a managed sidecar shadowing a slow candidate (tens of
milliseconds a call) behind a fast champion: the evidence shows the shadow's latency and its
dropped share, and a latency guard rolls the shadow back while callers only ever get the
champion's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.onnx_models import mlp
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import Load
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.harness import FEATURES, register, wait_for
from tests.rollouts.test_shadow_latency import GUARD, slow_mlp

pytestmark = pytest.mark.timeout(240)


def _ended(client: Client, deployment: str) -> dp.Deployment | None:
    d = client.get_deployment(deployment)
    final = (dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED)
    return d if d.rollout.state in final else None


def test_a_slow_shadow_is_rolled_back_by_a_latency_guard(
    tmp_path: Path, procs: list[Server]
) -> None:
    cp = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}").start()
    procs.append(cp)
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    v = register(
        client, tmp_path, model, champion=mlp(FEATURES, (16,), 2, seed=3), slow=slow_mlp(seed=3)
    )
    client.create_deployment(model, model=model, champion_version=v["champion"])
    side = sidecar(tmp_path, cp.address, model, name="sc0").start()
    procs.append(side)
    load = Load([side.address], model).start()
    try:
        wait_for(lambda: load.answers[str(v["champion"])] > 50, 30, "champion traffic")
        client.start_rollout(model, v["slow"], strategy="shadow", min_requests=20, guards=[GUARD])
        done = wait_for(lambda: _ended(client, model), 180, "the shadow to be rolled back")
    finally:
        load.stop()
    assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK, done.rollout.reason
    # On a window of 100 copies or over the phase, whichever comes first.
    assert done.rollout.reason.startswith("guard failed") and GUARD in done.rollout.reason
    shadow = done.rollout.evidence.shadow
    assert shadow.latency_p99 >= 0.01 and shadow.pairs + shadow.errors >= 20
    # The worker's CPU budget samples the copies down: the rest were dropped, and say so.
    assert shadow.dropped > 0 and 0 < shadow.dropped_rate < 1
    assert load.failures == []
    assert set(load.answers) == {str(v["champion"])}
