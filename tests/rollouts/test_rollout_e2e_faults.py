"""End to end under faults: a real control plane (a process, killable) and two managed
sidecar replicas. Covers automatic rollback of an erroring candidate, a control-plane crash
mid-rollout, and two control-plane replicas on PostgreSQL agreeing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.onnx_models import faulty_classifier
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import Load
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.e2e_setup import ERRORS_ONLY, rollout_ended, set_up
from tests.rollouts.harness import FEATURES, register, wait_for

pytestmark = pytest.mark.timeout(240)


def test_erroring_canary_is_rolled_back_by_the_default_guards(
    tmp_path: Path, procs: list[Server]
) -> None:
    # The candidate fails in ONNX Runtime on almost every real input.
    _cp, client, model, v, sidecars = set_up(
        tmp_path,
        procs,
        f"sqlite:///{tmp_path / 'cp.db'}",
        champion={"seed": 0},
        candidate=faulty_classifier(FEATURES),
    )
    load = Load([s.address for s in sidecars], model).start()
    try:
        wait_for(lambda: load.answers[str(v["champion"])] > 50, 30, "champion traffic")
        started = client.start_rollout(
            model,
            v["candidate"],
            strategy="canary",
            steps=[30, 100],
            step_duration=30,
        )
        assert any("error_rate" in g for g in started.rollout.effective_guards)
        done = wait_for(lambda: rollout_ended(client, model), 60, "the canary to be rolled back")
        assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK
        assert "error_rate" in done.rollout.reason
        assert done.rollout.evidence.candidate.errors > 0
        wait_for(
            lambda: (
                load.versions_since(time.time() - 1.0)
                == {s.address: {str(v["champion"])} for s in sidecars}
            ),
            30,
            "every sidecar to serve the champion only",
        )
        failures_then = len(load.failures)
        time.sleep(1.5)
        assert len(load.failures) == failures_then, load.failures[-3:]
    finally:
        load.stop()
    assert load.failures and all("out of data bounds" in f for f in load.failures)


def test_sidecars_serve_through_a_control_plane_crash_and_the_rollout_resumes(
    tmp_path: Path, procs: list[Server]
) -> None:
    cp, client, model, v, sidecars = set_up(
        tmp_path,
        procs,
        f"sqlite:///{tmp_path / 'cp.db'}",
        champion={"seed": 0},
        candidate={"seed": 1},
    )
    load = Load([s.address for s in sidecars], model).start()
    try:
        client.start_rollout(
            model,
            v["candidate"],
            strategy="canary",
            steps=[50, 100],
            min_requests=20,
            step_duration=4,
            guards=ERRORS_ONLY,
        )
        wait_for(
            lambda: (
                all(
                    versions == {str(v["champion"]), str(v["candidate"])}
                    for versions in load.versions_since(time.time() - 1.0).values()
                )
                and len(load.versions_since(time.time() - 1.0)) == 2
            ),
            30,
            "both replicas to split traffic",
        )
        before = client.get_deployment(model).rollout
        cp.kill()
        crashed = time.time()
        time.sleep(5)
        # Both replicas kept answering with the state they had, without failures.
        after = load.versions_since(crashed + 0.5)
        assert set(after) == {s.address for s in sidecars}
        assert load.failures == []
        cp.start()
        done = wait_for(
            lambda: rollout_ended(client, model), 90, "the rollout to finish after restart"
        )
    finally:
        load.stop()
    assert done.rollout.state == dp.ROLLOUT_STATE_PROMOTED, done.rollout.reason
    # The same rollout went on from the step it had reached: one start, no step walked twice.
    assert done.rollout.id == before.id
    events = [e for e in client.list_rollout_events(model) if e.rollout_id == before.id]
    actions = [e.action for e in events]
    assert actions.count("started") == 1 and actions.count("advanced") == 1, actions
    assert before.step in (0, 1)
    assert load.failures == []


@pytest.mark.postgres
def test_two_control_plane_replicas_on_postgresql_agree(
    tmp_path: Path, procs: list[Server], pg_url: str
) -> None:
    a = controlplane(tmp_path, pg_url, name="cp-a").start()
    b = controlplane(tmp_path, pg_url, name="cp-b").start()
    procs += [a, b]
    ca = Client(a.address, principal="alice", timeout=30)
    cb = Client(b.address, principal="alice", timeout=30)
    model = unique("m")
    v = register(ca, tmp_path, model, champion={"seed": 0}, candidate={"seed": 1})
    ca.create_deployment(model, model=model, champion_version=v["champion"])
    sidecars = [
        sidecar(tmp_path, a.address, model, name="sc-a").start(),
        sidecar(tmp_path, b.address, model, name="sc-b").start(),
    ]
    procs += sidecars
    load = Load([s.address for s in sidecars], model).start()
    try:
        cb.start_rollout(
            model,
            v["candidate"],
            strategy="canary",
            steps=[50, 100],
            min_requests=20,
            step_duration=2,
            guards=ERRORS_ONLY,
        )
        # The replica that did not take the call learns of it and tells its sidecar.
        wait_for(
            lambda: (
                str(v["candidate"])
                in load.versions_since(time.time() - 1.0).get(sidecars[0].address, set())
            ),
            10,
            "the sidecar behind replica A to route to the candidate",
        )
        done = wait_for(lambda: rollout_ended(ca, model), 120, "the canary to end")
    finally:
        load.stop()
    assert done.rollout.state == dp.ROLLOUT_STATE_PROMOTED, done.rollout.reason
    da, db = ca.get_deployment(model), cb.get_deployment(model)
    assert (da.generation, da.champion_version, da.etag) == (
        db.generation,
        db.champion_version,
        db.etag,
    )
    actions = [e.action for e in ca.list_rollout_events(model)]
    assert actions.count("promoted") == 1 and actions.count("advanced") == 1, actions
    assert load.failures == []
