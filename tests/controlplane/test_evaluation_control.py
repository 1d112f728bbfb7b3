"""Stopping evaluations through a real control plane: a model that never returns is ended by
the time limit, by CancelOperation (on this replica or another) and by a server stop; the
queue of evaluations is bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane import Client
from modelplane.errors import NotFound, ResourceExhausted
from modelplane.server.context import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane

FEATURES = [f"f{i}" for i in range(3)]


def loop_classifier(trips: int) -> bytes:
    """A binary classifier over FEATURES whose graph first runs an ONNX Loop ``trips`` times
    (10**12 trips: it never returns in practice)."""
    body = oh.make_graph(
        [
            oh.make_node("Add", ["v_in", "one"], ["v_out"]),
            oh.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", TensorProto.INT64, []),
            oh.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            oh.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
        [nh.from_array(np.array(1.0, np.float32), "one")],
    )
    nodes = [
        oh.make_node("ReduceSum", ["X"], ["s"], keepdims=0),
        oh.make_node("Loop", ["M", "cond", "s"], ["v_final"], body=body),
        oh.make_node("Mul", ["v_final", "zero"], ["z"]),
        oh.make_node("ReduceMean", ["X"], ["m"], axes=[1], keepdims=1),
        oh.make_node("Add", ["m", "z"], ["m2"]),
        oh.make_node("Sigmoid", ["m2"], ["p"]),
        oh.make_node("Sub", ["onef", "p"], ["q"]),
        oh.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    inits = [
        nh.from_array(np.array(trips, np.int64), "M"),
        nh.from_array(np.array(True), "cond"),
        nh.from_array(np.array(0.0, np.float32), "zero"),
        nh.from_array(np.array(1.0, np.float32), "onef"),
    ]
    graph = oh.make_graph(
        nodes,
        "loop",
        [oh.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [oh.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def dataset(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    columns = {n: rng.normal(size=200) for n in FEATURES}
    columns["target"] = (columns["f0"] > 0).astype(np.int64)
    path = folder / "data.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def register(c: Client, folder: Path, trips: int) -> tuple[str, int]:
    model_id = unique()
    c.create_model(model_id)
    path = folder / f"{model_id}.onnx"
    path.write_bytes(loop_classifier(trips))
    return model_id, int(c.register_version(model_id, path, feature_names=FEATURES).version)


def wait_done(c: Client, name: str):
    op = c.wait_operation(name, timeout=30)
    for _ in range(20):
        if op.done:
            return op
        op = c.wait_operation(name, timeout=30)
    raise AssertionError(f"operation {name} did not finish")


def wait_running(c: Client, name: str) -> None:
    for _ in range(600):
        if c.get_operation(name).progress_message == "evaluating":
            return
        time.sleep(0.05)
    raise AssertionError(f"operation {name} did not start")


def test_an_evaluation_that_never_returns_times_out(tmp_path: Path) -> None:
    data = dataset(tmp_path)
    cp = start_controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        evaluation_workers=1,
        evaluation_timeout_seconds=1.0,
    )
    try:
        with cp.client() as c:
            model_id, version = register(c, tmp_path, 10**12)
            op = wait_done(c, c.evaluate(model_id, version, data, label="target").name)
            evaluations = list(c.list_evaluations(model_id, version))
    finally:
        cp.handle.stop(0)
    assert op.error.code == "DEADLINE_EXCEEDED"
    assert op.error.reason == "EVALUATION_TIMEOUT"
    assert "--evaluation-timeout" in op.error.message
    assert not op.HasField("result") and evaluations == []


def test_cancel_stops_a_running_evaluation_and_frees_its_worker(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    data = dataset(tmp_path)
    with controlplane_any.client() as c:
        slow_id, slow = register(c, tmp_path, 10**12)
        quick_id, quick = register(c, tmp_path, 1)
        running = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
        wait_running(c, running.name)
        # Two workers: hold both, so the quick one waits for a cancelled one to give its up.
        second = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
        queued = c.evaluate(quick_id, quick, data, label="target")
        cancelled = c.cancel_operation(running.name)
        assert cancelled.done and cancelled.error.code == "CANCELLED"
        assert cancelled.error.reason == "CANCELLED" and cancelled.owner == ""
        c.cancel_operation(second.name)
        finished = wait_done(c, queued.name)
        assert not finished.HasField("error") and finished.HasField("result")
        # Cancelling a finished operation changes nothing.
        again = c.cancel_operation(finished.name)
        assert again.HasField("result") and not again.HasField("error")
        assert c.cancel_operation(running.name).error.reason == "CANCELLED"
        with pytest.raises(NotFound):
            c.cancel_operation("operations/op-nothing")
        assert list(c.list_evaluations(slow_id, slow)) == []
        actions = [e.action for e in c.audit_events(resource=running.name)]
    assert actions[-1] == "CancelOperation"


def test_a_cancel_on_another_replica_stops_the_work_here(tmp_path: Path) -> None:
    data = dataset(tmp_path)
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    cp = start_controlplane(tmp_path, url, evaluation_workers=1, operation_lease_seconds=0.6)
    other = Store.open(url)
    try:
        with cp.client() as c:
            slow_id, slow = register(c, tmp_path, 10**12)
            quick_id, quick = register(c, tmp_path, 1)
            running = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
            wait_running(c, running.name)
            queued = c.evaluate(quick_id, quick, data, label="target")
            OperationService(other, replica_id="other").cancel(
                RequestContext(principal="bob"), running.name
            )
            finished = wait_done(c, queued.name)
            stopped = c.get_operation(running.name)
            stored = list(c.list_evaluations(slow_id, slow))
    finally:
        other.close()
        cp.handle.stop(0)
    assert finished.HasField("result")
    assert stopped.error.reason == "CANCELLED" and not stopped.HasField("result")
    assert stored == []


def test_stopping_the_server_ends_a_model_run_in_progress(tmp_path: Path) -> None:
    data = dataset(tmp_path)
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", evaluation_workers=1)
    with cp.client() as c:
        model_id, version = register(c, tmp_path, 10**12)
        op = c.evaluate(model_id, version, data, label="target", compare_to="-")
        wait_running(c, op.name)
    stopper = threading.Thread(target=cp.handle.stop, args=(0,), daemon=True)
    stopper.start()
    stopper.join(120)
    assert not stopper.is_alive(), "the server stop waited on the model run"


def test_the_queue_of_evaluations_is_bounded(tmp_path: Path) -> None:
    data = dataset(tmp_path)
    cp = start_controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        evaluation_workers=1,
        evaluation_queue_size=2,
    )
    try:
        with cp.client() as c:
            model_id, version = register(c, tmp_path, 10**12)
            first = c.evaluate(model_id, version, data, label="target", compare_to="-")
            second = c.evaluate(model_id, version, data, label="target", compare_to="-")
            with pytest.raises(ResourceExhausted) as full:
                c.evaluate(model_id, version, data, label="target", compare_to="-")
            assert full.value.reason == "EVALUATION_QUEUE_FULL"
            assert "MODELPLANE_EVALUATION_QUEUE_SIZE" in full.value.message
            c.cancel_operation(second.name)
            c.cancel_operation(first.name)
            quick_id, quick = register(c, tmp_path, 1)
            for _ in range(600):  # the cancelled ones leave the queue as their workers stop
                try:
                    accepted = c.evaluate(quick_id, quick, data, label="target")
                    break
                except ResourceExhausted:
                    time.sleep(0.05)
            else:
                raise AssertionError("the queue never emptied")
            assert wait_done(c, accepted.name).HasField("result")
    finally:
        cp.handle.stop(0)


def test_a_cancelled_evaluation_waiting_for_a_worker_leaves_the_queue_at_once(
    tmp_path: Path,
) -> None:
    data = dataset(tmp_path)
    cp = start_controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        evaluation_workers=1,
        evaluation_queue_size=2,
    )
    try:
        with cp.client() as c:
            slow_id, slow = register(c, tmp_path, 10**12)
            quick_id, quick = register(c, tmp_path, 1)
            running = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
            wait_running(c, running.name)
            waiting = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
            assert c.cancel_operation(waiting.name).error.reason == "CANCELLED"
            # The only worker is still busy: the cancelled one must not hold the second place.
            accepted = c.evaluate(quick_id, quick, data, label="target")
            c.cancel_operation(running.name)
            finished = wait_done(c, accepted.name)
            cancelled = c.get_operation(waiting.name)
            stored = list(c.list_evaluations(slow_id, slow))
    finally:
        cp.handle.stop(0)
    assert finished.HasField("result")
    assert cancelled.error.reason == "CANCELLED" and stored == []
