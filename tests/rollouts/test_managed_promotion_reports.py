"""A rollout promoted while the retired champion's records still wait for the sidecar's
observer thread: they are left out of the report (one summary per arm), so the control plane
takes every report instead of refusing one with two champion summaries."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.traffic import infer
from tests.rollouts.harness import register, rows, start_held_canary, wait_for
from tests.rollouts.inprocess import client_of, managed, plane, spy_reports  # noqa: F401

pytestmark = pytest.mark.timeout(180)


class Gate:
    """An extra observer that holds the observer thread while closed."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.holding = threading.Event()

    def on_records(self, records: Any) -> None:
        if not self.opened.is_set():
            self.holding.set()
            self.opened.wait(60)


def test_records_of_the_retired_champion_do_not_make_a_second_champion_summary(
    plane: Any,  # noqa: F811
    managed: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The retired champion stays known to the sidecar however long the observer is held, so
    # its records are attributed to it when the observer takes them.
    monkeypatch.setattr("sidecar.managed.manager._LINGER_S", 600.0)
    cp = plane()
    client = client_of(cp)
    v = register(client, tmp_path, "m", champion={"seed": 0}, candidate={"seed": 1})
    client.create_deployment("m", model="m", champion_version=v["champion"])
    gate = Gate()
    sc = managed(cp.address, "m", observers=[gate])
    calls = spy_reports(sc.reporter)
    x = rows(20)
    with grpc.insecure_channel(f"127.0.0.1:{sc.port}") as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        gate.opened.clear()
        infer(stub, "m", x[0], routing_key="first")
        wait_for(gate.holding.is_set, 30, "the observer thread to be held")
        # Answered by the champion; their records wait behind the held observer.
        held = [infer(stub, "m", x[i], routing_key=f"k{i}").model_version for i in range(1, 20)]
        assert set(held) == {str(v["champion"])}
        start_held_canary(client, "m", v["candidate"])
        client.promote_rollout("m")
        wait_for(
            lambda: sc.manager.table.champion.number == v["candidate"],
            30,
            "the promoted candidate to serve as champion",
        )
        generation = sc.manager.table.generation
        gate.opened.set()
        for i in range(10):
            infer(stub, "m", x[i], routing_key=f"after{i}")
    wait_for(
        lambda: any(
            r.generation == generation and any(a.requests for a in r.arms) for r, _ in calls
        ),
        30,
        "a report of the promoted table with requests",
    )
    wait_for(lambda: sc.reporter.pending == 0, 30, "every report to be sent")
    refused = [(code, [(a.arm, a.version) for a in r.arms]) for r, code in calls if code != "OK"]
    assert refused == []
    assert sc.reporter.failures == 0
    for request, _ in calls:
        arms = [a.arm for a in request.arms]
        assert len(arms) == len(set(arms)), request
    # The 19 held requests of the retired champion were left out, and said so.
    assert sc.observer.late == 19
    promoted = [r for r, _ in calls if r.generation == generation]
    assert {(a.arm, a.version) for r in promoted for a in r.arms} == {("champion", v["candidate"])}
