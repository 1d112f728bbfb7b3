"""End to end: a real control plane (a process, killable) and two managed sidecar replicas.

Covers a canary walking to promotion with no failed request across the switch, a disagreeing
shadow rolled back, and sticky routing (faults: ``test_rollout_e2e_faults``).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.processes import Server
from modelplane.testing.traffic import Load, infer
from modelplane.v1 import deployments_pb2 as dp
from tests.rollouts.e2e_setup import ERRORS_ONLY, rollout_ended, set_up
from tests.rollouts.harness import rows, wait_for

pytestmark = pytest.mark.timeout(240)


def test_good_canary_walks_to_full_traffic_with_no_failed_request(
    tmp_path: Path, procs: list[Server]
) -> None:
    _cp, client, model, v, sidecars = set_up(
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
        done = wait_for(lambda: rollout_ended(client, model), 120, "the canary to end")
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
    _cp, client, model, v, sidecars = set_up(
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
        done = wait_for(lambda: rollout_ended(client, model), 60, "the shadow to be rolled back")
    finally:
        load.stop()
    assert done.rollout.state == dp.ROLLOUT_STATE_ROLLED_BACK
    assert "disagreement_rate" in done.rollout.reason
    assert done.rollout.evidence.shadow.pairs > 0
    assert done.rollout.evidence.shadow.disagreement_rate > 0.9
    assert done.champion_version == v["champion"]
    assert load.failures == []
    assert set(load.answers) == {str(v["champion"])}


def test_routing_is_sticky_by_key_across_replicas(tmp_path: Path, procs: list[Server]) -> None:
    _cp, client, model, v, sidecars = set_up(
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
