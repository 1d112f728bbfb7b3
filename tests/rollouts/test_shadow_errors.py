"""Shadow copies the candidate fails, on a real control plane and an in-process managed sidecar
(gRPC on loopback, SQLite), with a candidate that fails in ONNX Runtime on exactly the rows
whose first feature is above a threshold: copies stacked into one call that fails run again
one by one, so the shadow's errors are the copies that fail on their own, however the load
stacked them; each failed copy is in the prediction log (arm ``shadow``) with its inputs,
status and message; and the sidecar's log says so once, not once per failure."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pyarrow.compute as pc
import pytest
import structlog
from onnx import TensorProto, helper, numpy_helper

from controlplane.domain.deployments import ShadowSummary
from controlplane.rollouts import step_sum
from controlplane.store import Store
from controlplane.store.deployment_repos import Deployments
from modelplane import Client
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.onnx_models import mlp
from modelplane.testing.traffic import infer
from sidecar.managed.shadow import ShadowRecord
from sidecar.observers import RejectedRecord, record_bytes
from tests.rollouts.harness import FEATURES, register, rows, wait_for
from tests.rollouts.inprocess import client_of, managed, plane  # noqa: F401

pytestmark = pytest.mark.timeout(180)

THRESHOLD = 2.4
#: The first feature of a row the candidate answers, and of one it fails on.
SAFE, BREAKING = 2.0, 3.0
#: Room for every copy in the shadow queue: none is dropped, so every failing one is run.
QUEUE = 4096
WARNED = "shadow copies failed"


def fails_above(threshold: float, seed: int = 0) -> onnx.ModelProto:
    """``mlp(FEATURES, (16,), 2, seed=seed)`` that fails in ONNX Runtime on every row whose
    first feature is above ``threshold`` (a Gather out of range there) and answers the others
    as the MLP does; a batch holding such a row fails as a whole."""
    base = mlp(FEATURES, (16,), 2, seed=seed)
    graph = base.graph
    softmax = graph.node[-1]
    softmax.output[0] = "answer"
    graph.node.extend(
        [
            helper.make_node("Slice", ["input", "zero", "one", "one"], ["first"]),
            helper.make_node("Greater", ["first", "threshold"], ["above"]),
            helper.make_node("Cast", ["above"], ["flag"], to=TensorProto.INT64),
            helper.make_node("Mul", ["flag", "far"], ["index"]),
            helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
            helper.make_node("Reshape", ["looked_up", "column"], ["nothing"]),
            helper.make_node("Add", ["answer", "nothing"], ["output"]),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array(threshold, np.float32), "threshold"),
            numpy_helper.from_array(np.array(5, np.int64), "far"),
            numpy_helper.from_array(np.zeros((2, 1), np.float32), "table"),
            numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
        ]
    )
    onnx.checker.check_model(base)
    return base


def _shadowing(
    cp: Any, tmp_path: Path, sidecars: Callable[..., Any], **settings: Any
) -> tuple[Client, Any, int]:
    """Deployment ``m``: champion an MLP, the candidate :func:`fails_above` shadowing every
    request under a guard that never fails (the phase holds whatever the errors); returns
    the client, the sidecar and the candidate's version number."""
    client = client_of(cp)
    v = register(client, tmp_path, "m", champion={"seed": 0}, candidate=fails_above(THRESHOLD))
    client.create_deployment("m", model="m", champion_version=v["champion"])
    sc = sidecars(cp.address, "m", shadow_queue=QUEUE, **settings)
    client.start_rollout(
        "m",
        v["candidate"],
        strategy="shadow",
        shadow_fraction=1.0,
        min_requests=10**6,
        guards=["shadow.error_rate <= 1"],
    )
    wait_for(lambda: sc.manager.table.shadow is not None, 30, "the candidate to shadow")
    return client, sc, v["candidate"]


def _traffic(sc: Any, total: int, breaking: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``total`` single-row requests ``r<i>`` from 8 threads at once (so that shadow copies
    queue up and run stacked), exactly ``breaking`` of them above the threshold; returns the
    rows and the indices of those. Every request is answered by the champion."""
    x = rows(total, seed)
    x[:, 0] = np.minimum(x[:, 0], SAFE)
    chosen = sorted(np.random.default_rng(seed).choice(total, breaking, replace=False).tolist())
    x[chosen, 0] = BREAKING
    with grpc.insecure_channel(f"127.0.0.1:{sc.port}") as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: infer(stub, "m", x[i], request_id=f"r{i}"), range(total))
            )
    champion = str(sc.manager.table.champion.number)
    assert {a.model_version for a in answers} == {champion}
    return x, chosen


def _phase_shadow(store: Store) -> ShadowSummary | None:
    """The shadow's counts summed over the rollout's phase, as the control plane keeps them
    (what its guards are judged on over the phase)."""
    with store.read() as tx:
        d = Deployments(tx.session).get("m")
        assert d is not None and d.active_rollout is not None
        kept = step_sum.kept(tx, d, d.active_rollout)
        return None if kept is None else kept.shadow


def _copies(store: Store, total: int) -> ShadowSummary:
    """The phase's shadow counts once every one of ``total`` copies is accounted for."""

    def done() -> ShadowSummary | None:
        shadow = _phase_shadow(store)
        if shadow is None or shadow.pairs + shadow.errors + shadow.dropped < total:
            return None
        return shadow

    found: ShadowSummary = wait_for(done, 60, f"the phase to account for {total} copies")
    return found


def test_only_the_copies_the_candidate_fails_count_as_shadow_errors(
    plane: Any,  # noqa: F811
    managed: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = plane()
    _client, sc, _candidate = _shadowing(cp, tmp_path, managed)
    _traffic(sc, 1000, 10, seed=1)
    store = Store.open(f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        shadow = _copies(store, 1000)
    finally:
        store.close()
    # The queue had room for every copy, so none was dropped and each failing one ran.
    assert shadow.dropped == 0
    assert shadow.errors == 10
    assert shadow.pairs == 990 - shadow.dropped
    # The candidate answers the rows it takes as the champion does, reruns included.
    assert shadow.disagreements == 0


def test_each_failed_copy_is_logged_with_its_inputs_and_the_warning_is_not_repeated(
    plane: Any,  # noqa: F811
    managed: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.predlog import read_logs

    # One warning per hour at most: the test sees the first line, then the count at close.
    monkeypatch.setattr("sidecar.managed.shadow.FAILURE_WARNING_S", 3600.0)
    cp = plane()
    log_dir = tmp_path / "log"
    total, breaking = 300, 25
    with structlog.testing.capture_logs() as logs:
        _client, sc, candidate = _shadowing(cp, tmp_path, managed, log_dir=log_dir)
        x, chosen = _traffic(sc, total, breaking, seed=2)

        def shadow_rows() -> Any:
            table = read_logs(log_dir, arm="shadow")
            return table if table.num_rows >= total else None

        table = wait_for(shadow_rows, 60, "every shadow copy in the prediction log")
        sc.stop(0)
    failed = table.filter(pc.field("status_reason") == "MODEL_EXECUTION_FAILED").to_pylist()
    assert sorted(int(r["request_id"][1:]) for r in failed) == chosen
    for r in failed:
        i = int(r["request_id"][1:])
        assert [r[f"x_{j}"] for j in range(FEATURES)] == pytest.approx(x[i].tolist())
        assert r["status_code"] == "INVALID_ARGUMENT"
        assert r["status_message"].startswith("the model could not run on this input: ")
        assert r["model_version"] == str(candidate)
    answered = table.filter(pc.field("status_code") == "OK")
    assert answered.num_rows == total - breaking
    warned = [e for e in logs if e["event"] == WARNED]
    # The first failure, then (the worker stopping) the count of the rest: two lines.
    assert [(e["failed"], e["total"]) for e in warned] == [(1, 1), (breaking - 1, breaking)]
    assert warned[0]["reason"] == "MODEL_EXECUTION_FAILED"
    assert "--arm shadow" in warned[0]["hint"]
    assert not [e for e in logs if e["event"] == "shadow run failed"]


def test_the_hub_bounds_a_failed_copy_by_its_inputs() -> None:
    inputs = {"input": np.zeros((3, FEATURES), np.float32)}
    refusal = RejectedRecord("m", "2", "r0", "", "INVALID_ARGUMENT", "X", "x", inputs=inputs)
    assert record_bytes(ShadowRecord(None, None, {}, 1, None, refusal)) == 3 * FEATURES * 4
