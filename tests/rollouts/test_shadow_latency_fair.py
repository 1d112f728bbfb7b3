"""End to end: a real control plane and a managed sidecar shadowing a candidate identical to
the champion (the same weights, registered again) under light load (two threads). The shadow
worker runs up to 64 queued copies in one session call while the champion answers each request
in a batch about as large as the concurrency: charged its share of the call, a copy reads no
slower than a served request, so the README's latency guard keeps passing window after window
(charged the whole call, each copy read many times the champion's latency and the guard rolled
the twin back)."""

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
from tests.rollouts.test_shadow_latency import GUARD

pytestmark = pytest.mark.timeout(240)

#: Windows in which the guard must be judged (evaluated, and passing) before the test ends.
WINDOWS = 5


class Judged:
    """The windows in which the rollout's evidence shows :data:`GUARD` evaluated."""

    def __init__(self, client: Client, deployment: str) -> None:
        self.client = client
        self.deployment = deployment
        #: window end (seconds) -> (guard passed, shadow and champion p50, shadow copies)
        self.windows: dict[float, tuple[bool, float, float, int]] = {}

    def __call__(self) -> dp.Deployment | None:
        d = self.client.get_deployment(self.deployment)
        ev = d.rollout.evidence
        if d.rollout.state != dp.ROLLOUT_STATE_RUNNING:
            raise AssertionError(
                f"{d.rollout.reason} (shadow p50 {ev.shadow.latency_p50:.5f}s p99 "
                f"{ev.shadow.latency_p99:.5f}s, champion p50 {ev.champion.latency_p50:.5f}s "
                f"p99 {ev.champion.latency_p99:.5f}s; windows so far {self.windows})"
            )
        result = next((g for g in ev.guards if g.expression == GUARD), None)
        if result is not None and not result.error and ev.HasField("window_end_time"):
            end = ev.window_end_time.ToDatetime().timestamp()
            self.windows[end] = (
                result.passed,
                ev.shadow.latency_p50,
                ev.champion.latency_p50,
                ev.shadow.pairs + ev.shadow.errors,
            )
        return d if len(self.windows) >= WINDOWS else None


def test_a_shadow_identical_to_the_champion_passes_the_latency_guard(
    tmp_path: Path, procs: list[Server]
) -> None:
    cp = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}").start()
    procs.append(cp)
    client = Client(cp.address, principal="alice", timeout=30)
    model = unique("m")
    # Heavy enough per row (two 2048-wide layers) that compute, not the call's overhead,
    # makes most of a request's latency.
    champion = mlp(FEATURES, (2048, 2048), 2, seed=1)
    twin = mlp(FEATURES, (2048, 2048), 2, seed=1)
    twin.doc_string = "the champion's weights, registered again"
    v = register(client, tmp_path, model, champion=champion, twin=twin)
    client.create_deployment(model, model=model, champion_version=v["champion"])
    side = sidecar(tmp_path, cp.address, model, name="sc0").start()
    procs.append(side)
    load = Load([side.address], model, threads=2).start()
    try:
        wait_for(lambda: load.answers[str(v["champion"])] > 50, 30, "champion traffic")
        client.start_rollout(model, v["twin"], strategy="shadow", min_requests=20, guards=[GUARD])
        judged = Judged(client, model)
        d = wait_for(judged, 180, f"{WINDOWS} windows judged by {GUARD}", interval=0.5)
    finally:
        load.stop()
    # Not rolled back: every window judged passed, and the phase's sum did too.
    assert d.rollout.state == dp.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert all(passed for passed, *_ in judged.windows.values()), judged.windows
    ev = d.rollout.evidence
    assert ev.shadow.disagreement_rate == 0.0 and ev.shadow.pairs > 0
    # A copy reads no slower than a served request: within 2x of it. (Its share of a batched
    # call leaves out what a request spends besides compute, so it may read well below.)
    shadow, champion = ev.shadow.latency_p50, ev.champion.latency_p50
    assert 0 < shadow <= 2 * champion, judged.windows
    assert all(0 < p50 <= 2 * theirs for _, p50, theirs, _ in judged.windows.values())
    assert load.failures == []
    assert set(load.answers) == {str(v["champion"])}
