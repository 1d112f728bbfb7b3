"""Shadow comparison on a real managed sidecar: the champion's answers are compared with the
shadow's whole, whatever subset of outputs the client asked for."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow.compute as pc
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_plane import NAME, RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import output_array, raw_request, stub

from sidecar.managed.shadow import ShadowJob, ShadowRunner


def classifier(seed: int) -> bytes:
    """``input`` FP32 [n, 8] -> ``label`` INT64 [n] and ``probabilities`` FP32 [n, 2]."""
    w = np.random.default_rng(seed).standard_normal((8, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2]),
        ],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("asked", [["label"], ["probabilities"], []], ids=str)
def test_shadow_compares_every_output_whatever_the_client_asked(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
    asked: list[str],
) -> None:
    plane = real_plane
    models = {1: classifier(1), 2: classifier(2)}
    plane.deploy(models)
    plane.shadow(2, 1.0)
    h = real_managed()
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32)
    s = stub(h.port)
    for i in range(len(x)):
        request = raw_request(NAME, {"input": ("FP32", x[i : i + 1])}, id=f"q{i}")
        for name in asked:
            request.outputs.add(name=name)
        reply = s.ModelInfer(request)
        assert [o.name for o in reply.outputs] == (asked or ["label", "probabilities"])
        if asked == ["label"]:
            assert output_array(reply, 0, np.int64).shape == (1,)
    reports = plane.wait_reports(lambda rs: sum(r.shadow.pairs for r in rs if r.shadow) >= len(x))
    shadows = [r.shadow for r in reports if r.shadow and r.shadow.pairs]
    expected = {}
    for n, data in models.items():
        labels, probabilities = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )
        expected[n] = (labels, probabilities[:, 1])
    assert sum(sh.pairs for sh in shadows) == len(x)
    assert sum(sh.disagreements for sh in shadows) == int(
        np.count_nonzero(expected[1][0] != expected[2][0])
    )
    assert sum(sh.abs_diff_sum for sh in shadows) == pytest.approx(
        float(np.abs(expected[1][1] - expected[2][1]).sum()), rel=1e-4
    )
    champion = np.sum(
        [list(sh.champion_scores.counts) for sh in shadows if sh.champion_scores], axis=0
    )
    want = np.bincount(
        np.minimum((expected[1][1].astype(np.float64) * 50).astype(np.int64), 49), minlength=50
    )
    assert champion.tolist() == want.tolist()


def _shadowing(managed: Any, plane: RealPlane) -> Any:
    """A managed sidecar whose version 2 shadows champion 1 (version 3 registered too)."""
    plane.deploy({n: classifier(n) for n in (1, 2, 3)})
    plane.shadow(2, 1.0)
    h = managed()
    assert h.wait_ready(60)
    return h


def _shadow_three_instead(plane: RealPlane) -> int:
    """End the shadow rollout of version 2 and start one of version 3; returns the
    deployment's generation then."""
    plane.client.abort_rollout(NAME)
    plane.shadow(3, 1.0)
    return int(plane.client.get_deployment(NAME).generation)


def _jobs(table: Any, count: int) -> list[ShadowJob]:
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    request = raw_request(NAME, {"input": ("FP32", x)}, id="copy")
    outputs = dict(
        zip(
            table.champion.model.signature.output_names,
            table.champion.model.runtime.run(
                table.champion.model.signature.output_names, {"input": x}
            ),
            strict=True,
        )
    )
    return [
        ShadowJob(request, table.champion, table.shadow, outputs, "", time.monotonic())
        for _ in range(count)
    ]


def _wait(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_queued_shadow_copies_keep_their_version_loaded_and_count_for_it_only(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    plane = real_plane
    h = _shadowing(real_managed, plane)
    table = h.manager.table
    retiring = table.shadow
    release = threading.Event()

    def publish(record: Any) -> None:
        release.wait(30)
        h.shadow._publish(record)  # on to the sidecar's observer hub

    runner = ShadowRunner(publish, budget=1.0)
    for job in _jobs(table, 3):
        assert runner.submit(job)
    assert retiring.in_flight == 3
    runner.start()
    try:
        # Version 3 shadows from now on; version 2 leaves the table with copies still queued.
        generation = _shadow_three_instead(plane)
        _wait(lambda: h.manager.table.generation == generation, 60)
        time.sleep(1.5)  # past the linger after which an idle retired version is released
        assert retiring in h.manager.retiring, "released while copies for it were queued"
        release.set()
        _wait(lambda: retiring not in h.manager.retiring)
        assert retiring.in_flight == 0 and runner.queued_bytes == 0
        seen = len(plane.reports)
        reports = plane.wait_reports(lambda rs: len(rs) >= seen + 3)
        later = [r.shadow for r in reports if r.generation == generation]
        assert later and all(sh is not None and sh.version == 3 for sh in later)
        assert sum(sh.pairs + sh.errors for sh in later) == 0  # version 2's copies are not 3's
    finally:
        release.set()
        runner.close()


def test_the_shadow_queue_is_bounded_in_bytes(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    h = _shadowing(real_managed, real_plane)
    table = h.manager.table
    jobs = _jobs(table, 5)
    size = jobs[0].request.ByteSize() + sum(a.nbytes for a in jobs[0].outputs.values())
    release = threading.Event()
    ran: list[Any] = []

    def publish(record: Any) -> None:
        release.wait(30)
        ran.append(record)

    runner = ShadowRunner(publish, budget=1.0, max_bytes=3 * size + size // 2)
    assert [runner.submit(job) for job in jobs] == [True, True, True, False, False]
    assert runner.take_dropped() == 2 and runner.queued_bytes == 3 * size
    runner.start()
    release.set()
    _wait(lambda: runner.queued_bytes == 0)
    assert runner.submit(_jobs(table, 1)[0])  # room again
    runner.close()
    assert sum(len(r.record.request_ids) for r in ran) == 4


def test_copies_queued_at_close_still_leave_their_version(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    h = _shadowing(real_managed, real_plane)
    table = h.manager.table
    retiring = table.shadow
    ran: list[Any] = []

    def publish(record: Any) -> None:
        time.sleep(0.05)  # a round this long earns the worker a long rest at a 0.1% budget
        ran.append(record)

    runner = ShadowRunner(publish, budget=0.001)
    first, *queued = _jobs(table, 4)
    assert runner.submit(first)
    runner.start()
    _wait(lambda: len(ran) == 1)
    for job in queued:  # the worker rests: these stay queued
        assert runner.submit(job)
    assert retiring.in_flight == 3
    runner.close()
    assert retiring.in_flight == 0 and runner.queued_bytes == 0
    assert not runner.submit(_jobs(table, 1)[0])  # closed: refused, and nothing held
    assert retiring.in_flight == 0 and runner.queued_bytes == 0
    generation = _shadow_three_instead(real_plane)
    _wait(lambda: h.manager.table.generation == generation, 60)
    _wait(lambda: retiring not in h.manager.retiring)  # released


def test_the_shadow_worker_outlives_a_failing_round(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    h = _shadowing(real_managed, real_plane)
    table = h.manager.table
    calls: list[Any] = []

    def publish(record: Any) -> None:
        calls.append(record)
        if len(calls) <= 2:  # the run's record, then the error record that replaces it
            raise RuntimeError("the sink is down")

    runner = ShadowRunner(publish, budget=1.0)
    runner.start()
    try:
        first, second = _jobs(table, 2)
        assert runner.submit(first)
        _wait(lambda: len(calls) >= 2 and runner.queued_bytes == 0)
        assert runner.submit(second)
        _wait(lambda: any(r.record is not None for r in calls[2:]))
        _wait(lambda: table.shadow.in_flight == 0 and runner.queued_bytes == 0)
    finally:
        runner.close()


def test_the_log_holds_every_output_whether_a_request_was_shadowed_or_not(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
) -> None:
    from sidecar.predlog import PredictionLogSettings, read_logs

    real_plane.deploy({1: classifier(1), 2: classifier(2)})
    real_plane.shadow(2, 0.5)
    log_dir = tmp_path / "log"
    h = real_managed(log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05))
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    s = stub(h.port)
    for i in range(len(x)):
        request = raw_request(NAME, {"input": ("FP32", x[i : i + 1])}, id=f"q{i}")
        request.outputs.add(name="label")
        assert [o.name for o in s.ModelInfer(request).outputs] == ["label"]
    _wait(lambda: read_logs(log_dir).filter(pc.field("arm") == "champion").num_rows == 40)
    _wait(lambda: read_logs(log_dir).filter(pc.field("arm") == "shadow").num_rows > 0)
    rows = read_logs(log_dir).to_pylist()
    assert all(r["out_label"] is not None and r["out_probabilities"] for r in rows)


def _attention(shift: float) -> bytes:
    """``out[n, 2] = softmax(q @ k^T) @ k + shift``: each query attends over its own request's
    keys, so stacking two requests' rows would change both answers."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["w"], axis=1),
            helper.make_node("MatMul", ["w", "k"], ["attended"]),
            helper.make_node("Add", ["attended", "shift"], ["out"]),
        ],
        "attend",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, [None, 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(np.array(shift, np.float32), "shift")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_copies_for_a_shadow_that_must_not_batch_run_one_by_one(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    """The load-time check found that stacking changes the shadow's answers: queued copies
    are not stacked into one call either, so each is compared on its own answer."""
    blobs = {n: _attention(float(n)) for n in (1, 2)}
    real_plane.deploy(blobs)
    real_plane.shadow(2, 1.0)
    h = real_managed(max_batch_size=8)
    assert h.wait_ready(60)
    table = h.manager.table
    assert not table.shadow.model.signature.batchable
    rng = np.random.default_rng(3)
    feeds = [
        {"q": rng.standard_normal((2, 2)).astype(np.float32), "k": np.full((2, 2), 10.0 * i, "f4")}
        for i in range(3)
    ]
    published: list[Any] = []
    runner = ShadowRunner(published.append, budget=1.0)
    for i, feed in enumerate(feeds):
        request = raw_request("attend", {n: ("FP32", a) for n, a in feed.items()}, id=f"c{i}")
        (champion,) = table.champion.model.runtime.run(["out"], feed)
        job = ShadowJob(request, table.champion, table.shadow, {"out": champion}, "", 0.0)
        assert runner.submit(job)
    runner.start()
    runner.close(10)
    session = ort.InferenceSession(blobs[2], providers=["CPUExecutionProvider"])
    records = [p.record for p in published if p.record is not None]
    assert [r.row_counts for r in records] == [[2], [2], [2]]
    for feed, record in zip(feeds, records, strict=True):
        (alone,) = session.run(None, feed)
        np.testing.assert_allclose(record.outputs["out"], alone, rtol=1e-5, atol=1e-6)
