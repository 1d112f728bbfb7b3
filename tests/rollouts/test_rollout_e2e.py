"""End to end: a real control plane (a process, killable) and two managed sidecar replicas.

Covers a canary walking to promotion with no failed request across the switch, automatic
rollback of bad candidates, a control-plane crash mid-rollout, sticky routing, and two
control-plane replicas on PostgreSQL agreeing.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.onnx_models import faulty_classifier
from modelplane.testing.processes import Server, controlplane, sidecar
from modelplane.testing.traffic import Load, infer
from modelplane.v1 import deployments_pb2 as dp
from tests.conftest import unique
from tests.rollouts.harness import FEATURES, register, rows, wait_for

pytestmark = pytest.mark.timeout(240)

# Latency on two shared cores is too noisy for the default p99 guard in tests that are not
# about it: the walks that must succeed guard on errors only.
ERRORS_ONLY = ["candidate.error_rate <= champion.error_rate + 0.01"]


def _state(client: Client, deployment: str) -> dp.Deployment:
    return client.get_deployment(deployment)


def _ended(client: Client, deployment: str) -> dp.Deployment | None:
    d = _state(client, deployment)
    final = (dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED)
    return d if d.rollout.state in final else None


def _setup(
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


def test_good_canary_walks_to_full_traffic_with_no_failed_request(
    tmp_path: Path, procs: list[Server]
) -> None:
    _cp, client, model, v, sidecars = _setup(
        tmp_path,
        procs,
        f"sqlite:///{tmp_path / 'cp.db'}",
        champion={"seed": 0},
        candidate={"seed": 1},
    )
    load = Load([s.address for s in sidecars], model).start()
    try:
        wait_for(lambda: load.answers[str(v["champion"])] > 50, 30, "champion traffic")
        client.start_rollout(
            model,
            v["candidate"],
            strategy="canary",
            steps=[20, 60, 100],
            min_requests=20,
            step_duration=2,
            guards=ERRORS_ONLY,
        )
        done = wait_for(lambda: _ended(client, model), 120, "the canary to end")
        assert done.rollout.state == dp.ROLLOUT_STATE_PROMOTED, done.rollout.reason
        assert done.champion_version == v["candidate"]
        # Every replica ends up answering with the new champion only.
        wait_for(
            lambda: (
                load.versions_since(time.time() - 1.0)
                == {s.address: {str(v["candidate"])} for s in sidecars}
            ),
            30,
            "every sidecar to serve the promoted version only",
        )
    finally:
        load.stop()
    assert load.failures == []
    assert load.answers[str(v["champion"])] > 0 and load.answers[str(v["candidate"])] > 0
    actions = [e.action for e in client.list_rollout_events(model)]
    assert actions.count("advanced") == 2, actions
    assert actions.count("promoted") == 1 and actions.count("started") == 1, actions


def test_disagreeing_shadow_is_rolled_back_and_never_answers(
    tmp_path: Path, procs: list[Server]
) -> None:
    _cp, client, model, v, sidecars = _setup(
        tmp_path,
        procs,
        f"sqlite:///{tmp_path / 'cp.db'}",
        champion={"seed": 3},
        broken={"seed": 3, "inverted": True},
    )
    load = Load([s.address for s in sidecars], model).start()
    try:
        wait_for(lambda: load.answers[str(v["champion"])] > 50, 30, "champion traffic")
        client.start_rollout(
            model,
            v["broken"],
            strategy="shadow",
            guards=["shadow.disagreement_rate <= 0.05"],
        )
        done = wait_for(lambda: _ended(client, model), 60, "the shadow to be rolled back")
    finally:
        load.stop()
    assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK
    assert "disagreement_rate" in done.rollout.reason
    assert done.rollout.evidence.shadow.pairs > 0
    assert done.rollout.evidence.shadow.disagreement_rate > 0.9
    assert done.champion_version == v["champion"]
    assert load.failures == []
    assert set(load.answers) == {str(v["champion"])}


def test_erroring_canary_is_rolled_back_by_the_default_guards(
    tmp_path: Path, procs: list[Server]
) -> None:
    # The candidate fails in ONNX Runtime on almost every real input.
    _cp, client, model, v, sidecars = _setup(
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
        done = wait_for(lambda: _ended(client, model), 60, "the canary to be rolled back")
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
    cp, client, model, v, sidecars = _setup(
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
        done = wait_for(lambda: _ended(client, model), 90, "the rollout to finish after restart")
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


def test_routing_is_sticky_by_key_across_replicas(tmp_path: Path, procs: list[Server]) -> None:
    _cp, client, model, v, sidecars = _setup(
        tmp_path,
        procs,
        f"sqlite:///{tmp_path / 'cp.db'}",
        champion={"seed": 0},
        candidate={"seed": 1},
    )
    client.start_rollout(model, v["candidate"], strategy="ab", split=50, guards=ERRORS_ONLY)
    channels = [grpc.insecure_channel(s.address) for s in sidecars]
    stubs = [pbg.GRPCInferenceServiceStub(c) for c in channels]
    row = rows(1)[0]

    def split_seen() -> bool:
        seen = {infer(stub, model, row).model_version for stub in stubs for _ in range(20)}
        return seen == {str(v["champion"]), str(v["candidate"])}

    try:
        wait_for(split_seen, 30, "both replicas to apply the A/B split")
        chosen: dict[str, set[str]] = {}
        for k in range(150):
            key = f"user-{k}"
            chosen[key] = {
                infer(stub, model, row, routing_key=key).model_version
                for stub in stubs
                for _ in range(2)
            }
        # A pinned version bypasses routing.
        pinned = infer(stubs[0], model, row, routing_key="user-1", version=str(v["champion"]))
    finally:
        for c in channels:
            c.close()
    assert all(len(versions) == 1 for versions in chosen.values())
    share = sum(versions == {str(v["candidate"])} for versions in chosen.values()) / len(chosen)
    assert 0.3 < share < 0.7
    assert pinned.model_version == str(v["champion"])


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
        done = wait_for(lambda: _ended(ca, model), 120, "the canary to end")
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
