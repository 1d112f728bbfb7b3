"""A shadow's latency and dropped share reach the evidence and the guards, through a real
control plane (gRPC on loopback, SQLite and PostgreSQL) fed window reports that the managed
sidecar's own counters (:mod:`sidecar.managed.compare`) fill from real ONNX models run with
onnxruntime: a fast champion, and a shadow that takes tens of milliseconds per row."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from controlplane.api.deployments_converters import shadow_from_proto
from controlplane.rollouts.merge import derive_shadow, merge_shadow
from controlplane.store import deployment_json as dj
from modelplane import Client
from modelplane.testing.onnx_models import mlp
from modelplane.v1 import deployments_pb2 as pb
from sidecar.managed.compare import PROBABILITY, ArmCounts, OutputRule, ShadowCounts
from sidecar.observers import BatchRecord
from tests.conftest import unique
from tests.rollouts.harness import FEATURES, register, rows
from tests.rollouts.inprocess import client  # noqa: F401

pytestmark = pytest.mark.timeout(120)

GUARD = "shadow.latency_p99 <= 2.0 * champion.latency_p99 + 0.005"
RULE = OutputRule("output", "argmax", "output", "column1", PROBABILITY)
MIN_REQUESTS = 20


def slow_mlp(seed: int, layers: int = 24, width: int = 1024, copies: int = 32) -> onnx.ModelProto:
    """``mlp(FEATURES, (16,), 2, seed=seed)`` with the same answers, made slow per row: each
    row is projected to ``copies`` rows of ``width`` and put through a chain of ``layers``
    [width, width] products (tens of milliseconds a row, in a call of one row as in one of
    64), whose sum per row is added to that row's logits times 0. The time scales with the
    rows, as a genuinely heavier model's does, so a copy's share of a batched call is slow
    too; the input feeds it, so nothing is folded into a constant."""
    model = mlp(FEATURES, (16,), 2, seed=seed)
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    rng = np.random.default_rng(99)
    project = rng.standard_normal((FEATURES, copies * width)) / np.sqrt(FEATURES)
    weights = rng.standard_normal((width, width)) / np.sqrt(width)
    graph.initializer.extend(
        [
            numpy_helper.from_array(project.astype(np.float32), "w_in"),
            numpy_helper.from_array(weights.astype(np.float32), "w_slow"),
            numpy_helper.from_array(np.array([-1, width], np.int64), "stacked"),
            numpy_helper.from_array(np.array([-1, copies * width], np.int64), "per_row"),
            numpy_helper.from_array(np.array([1], np.int64), "row_axis"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
    )
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["p"]),
        helper.make_node("Reshape", ["p", "stacked"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w_slow"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("Reshape", [f"h{layers}", "per_row"], ["r"]),
        helper.make_node("ReduceSum", ["r", "row_axis"], ["t"], keepdims=1),
        helper.make_node("Mul", ["t", "zero"], ["t0"]),
        helper.make_node("Add", [softmax.input[0], "t0"], ["slow_logits"]),
    ]
    softmax.input[0] = "slow_logits"
    at = list(graph.node).index(softmax)
    ordered = [*graph.node[:at], *nodes, *graph.node[at:]]
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return model


class Replica:
    """A sidecar replica's window counts, filled by running the champion on each request and
    the shadow on each copy, one session call each, as the serving path and the shadow worker
    call them."""

    def __init__(self, champion: onnx.ModelProto, shadow: onnx.ModelProto) -> None:
        self.champion = ort.InferenceSession(champion.SerializeToString())
        self.shadow = ort.InferenceSession(shadow.SerializeToString())
        self.sequence = 0
        #: Each copy's compute seconds, as measured here.
        self.times: list[float] = []

    def window(self, c: Client, name: str, n: int, dropped: int) -> pb.Deployment:
        """Report one window of ``n`` requests, each copied to the shadow, and ``dropped``
        copies dropped; the deployment after it."""
        d = c.get_deployment(name)
        arm = ArmCounts("champion", d.rollout.champion_version, PROBABILITY)
        compared = ShadowCounts(d.rollout.candidate_version, PROBABILITY)
        compared.dropped = dropped
        for i, x in enumerate(rows(n, seed=self.sequence)):
            feed = {"input": x[None, :]}
            start = time.perf_counter()
            (mine,) = self.champion.run(None, feed)
            arm.add_requests([time.perf_counter() - start], ["OK"], [""])
            arm.add_rows(1, RULE.labels({"output": mine}), RULE.scores({"output": mine}))
            start = time.perf_counter()
            (theirs,) = self.shadow.run(None, feed)
            elapsed = time.perf_counter() - start
            self.times.append(elapsed)
            compared.add_latencies(_record(i, theirs, elapsed))
            compared.add_pairs(
                (RULE.labels({"output": mine}), RULE.scores({"output": mine})),
                (RULE.labels({"output": theirs}), RULE.scores({"output": theirs})),
                0.0,
            )
        self.sequence += 1
        c._call(
            c.deployments.ReportWindow,
            pb.ReportWindowRequest(
                name=f"deployments/{name}",
                replica="r1",
                sequence=self.sequence,
                generation=d.generation,
                rollout_id=d.rollout.id,
                arms=[arm.to_proto()],
                shadow=compared.to_proto(),
            ),
        )
        return c.get_deployment(name)


def _record(i: int, outputs: Any, elapsed: float) -> BatchRecord:
    """The shadow worker's record of one copy's session call."""
    return BatchRecord(
        model="m",
        version="2",
        provider="CPUExecutionProvider",
        inputs={},
        outputs={"output": outputs},
        request_ids=[f"r{i}"],
        trace_ids=[""],
        row_counts=[1],
        latencies_s=[elapsed + 0.5],  # its wait in the queue too, which is left out
        status=["OK"],
        compute_s=elapsed,
    )


def _shadowing(c: Client, tmp_path: Path, **versions: Any) -> tuple[str, dict[str, int]]:
    name = unique("m")
    numbers = register(c, tmp_path, name, **versions)
    c.create_deployment(name, model=name, champion_version=numbers["champion"])
    shadow = next(k for k in numbers if k != "champion")
    c.start_rollout(
        name, numbers[shadow], strategy="shadow", min_requests=MIN_REQUESTS, guards=[GUARD]
    )
    return name, numbers


def test_a_slow_shadow_shows_its_latency_and_a_latency_guard_rolls_it_back(
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    slow = slow_mlp(seed=3, copies=64)  # about 0.1 s a call: far above any pause of the machine
    name, v = _shadowing(client, tmp_path, champion=mlp(FEATURES, (16,), 2, seed=3), slow=slow)
    side = Replica(mlp(FEATURES, (16,), 2, seed=3), slow)
    d = side.window(client, name, 10, dropped=30)
    # Fewer than min_requests copies in the phase: not judged yet, but shown.
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING
    sh = d.rollout.evidence.shadow
    assert sh.latency_p99 >= 0.01 and sh.latency.counts
    assert sh.dropped_rate == pytest.approx(30 / (10 + 30))
    assert sh.pairs == 10 and sh.disagreement_rate == 0.0  # same answers
    d = side.window(client, name, MIN_REQUESTS, dropped=0)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.rollout.reason.startswith(f"guard failed over the phase: {GUARD}")
    assert d.champion_version == v["champion"]
    ev = d.rollout.evidence
    assert ev.shadow.latency_p99 >= 0.01
    # The p99 of the 30 copies is in the bucket (10 a decade) of the slowest of them.
    bucket = 10**0.1
    assert max(side.times) / bucket <= ev.shadow.latency_p99 <= max(side.times) * bucket
    assert ev.shadow.dropped_rate == pytest.approx(30 / (10 + MIN_REQUESTS + 30))
    # The phase's sum as stored reads back the same.
    kept = dj.shadow(dj.to_json(derive_shadow(shadow_from_proto(ev.shadow))))
    assert kept is not None and kept.latency_p99 == ev.shadow.latency_p99
    assert kept.dropped_rate == pytest.approx(ev.shadow.dropped_rate)


def test_copies_answered_count_by_their_share_of_the_session_call() -> None:
    """The shadow counts one latency per answered copy: its share of the call that answered
    it, by rows (the worker runs many queued copies in one call), not its wait in the shadow
    queue; failed copies and a window with none answered add none, and a window with none
    sends no latency."""
    counts = ShadowCounts(2, PROBABILITY)
    assert not counts.to_proto().HasField("latency")
    record = _record(0, np.zeros((4, 2), np.float32), 0.04)
    record.request_ids, record.row_counts = ["a", "b", "c"], [1, 1, 2]
    record.status = ["OK", "MODEL_EXECUTION_FAILED", "OK"]
    record.latencies_s = [0.5, 0.5, 0.5]
    counts.add_latencies(record)
    wire = counts.to_proto().latency
    shares = np.array([0.01, 0.02])  # 0.04 s over 4 rows: 1 row, then 2 rows
    assert sum(wire.counts) + wire.underflow + wire.overflow == 2
    assert wire.sum == pytest.approx(shares.sum())
    expected, _ = np.histogram(np.log10(shares), bins=70, range=(-5.0, 2.0))
    assert list(wire.counts) == expected.tolist()
    # A call of copies without rows: equal shares.
    empty = ShadowCounts(2, PROBABILITY)
    record.row_counts, record.status = [0, 0, 0], ["OK"] * 3
    empty.add_latencies(record)
    assert empty.to_proto().latency.sum == pytest.approx(0.04)


def test_dropped_rate_counts_the_copies_each_replica_answered() -> None:
    """During a rolling upgrade a replica of the previous release sends no shadow latency:
    its copies answered count by its pairs, the others' by their latencies, each before the
    merge, so the dropped share stays dropped / (answered + errors + dropped)."""
    new = ShadowCounts(2, None)
    new.pairs, new.dropped, new.errors = 100, 10, 3
    new.latency.add(np.full(100, 0.002))
    old = ShadowCounts(2, None)
    old.pairs, old.dropped, old.errors = 80, 12, 1
    previous = old.to_proto()  # no copy answered by latency: no latency, as before
    assert not previous.HasField("latency")
    merged = merge_shadow([shadow_from_proto(new.to_proto()), shadow_from_proto(previous)])
    assert merged is not None and merged.latency is not None and merged.latency.total == 100
    assert merged.dropped_rate == pytest.approx((10 + 12) / ((100 + 80) + (3 + 1) + (10 + 12)))
    # One replica of each kind alone reads the same as before.
    alone = merge_shadow([shadow_from_proto(previous)])
    assert alone is not None and alone.dropped_rate == pytest.approx(12 / (80 + 1 + 12))


def test_a_kept_sum_keeps_the_copies_its_replicas_answered() -> None:
    """A step's sum is kept (as JSON, with the rollout) and merged with each next report: the
    copies a replica of the previous release answered (counted by its pairs) stay counted, so
    the sum of sums reads the dropped share the one merge of every report reads."""
    new = ShadowCounts(2, None)
    new.pairs, new.dropped, new.errors = 100, 10, 3
    new.latency.add(np.full(100, 0.002))
    old = ShadowCounts(2, None)
    old.pairs, old.dropped, old.errors = 80, 12, 1
    later = ShadowCounts(2, None)
    later.pairs, later.dropped = 50, 5
    later.latency.add(np.full(50, 0.003))
    reports = [shadow_from_proto(c.to_proto()) for c in (new, old, later)]
    kept = merge_shadow(reports[:2])
    assert kept is not None and kept.answered == 180
    stored = dj.shadow(dj.to_json(kept))
    assert stored == kept  # the count survives the round trip through the kept JSON
    step = merge_shadow([stored, reports[2]])
    assert step is not None and step.answered == 230
    once = merge_shadow(reports)
    assert once is not None
    expected = (10 + 12 + 5) / ((100 + 80 + 50) + (3 + 1) + (10 + 12 + 5))
    assert step.dropped_rate == pytest.approx(expected)
    assert once.dropped_rate == pytest.approx(expected)
