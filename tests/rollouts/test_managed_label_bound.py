"""A model whose predicted labels take more distinct values in one window than a report may
carry (item ids, a 2,000-class argmax): each arm reports its 1,024 most frequent labels and
the control plane takes every report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from controlplane.rollouts.merge import MAX_LABELS as CONTROL_PLANE_MAX_LABELS
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.oip import grpc_service_pb2_grpc as pbg
from sidecar.managed.compare import MAX_LABELS
from tests.rollouts.harness import wait_for
from tests.rollouts.inprocess import client_of, managed, plane, spy_reports  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def _id_model() -> Any:
    """``input`` FP32 [n, 8] -> ``label`` INT64 [n, 1] = floor(1000 * input[:, 0])."""
    nodes = [
        helper.make_node("Slice", ["input", "s", "e", "a"], ["c"]),
        helper.make_node("Mul", ["c", "k"], ["m"]),
        helper.make_node("Floor", ["m"], ["f"]),
        helper.make_node("Cast", ["f"], ["label"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "ids",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])],
        initializer=[
            helper.make_tensor("k", TensorProto.FLOAT, [1], [1000.0]),
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [1]),
            helper.make_tensor("a", TensorProto.INT64, [1], [1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_sidecar_bound_is_the_control_planes() -> None:
    assert MAX_LABELS == CONTROL_PLANE_MAX_LABELS


def test_a_window_with_more_labels_than_a_report_carries_is_taken(
    plane: Any,  # noqa: F811
    managed: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = plane(report_interval_seconds=1.0)
    client = client_of(cp)
    client.create_model("m")
    path = tmp_path / "ids.onnx"
    onnx.save(_id_model(), path)
    version = client.register_version("m", path, capture_env=False).version
    client.create_deployment("m", model="m", champion_version=version)
    sc = managed(cp.address, "m")
    calls = spy_reports(sc.reporter)
    x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    # Label 5000 is the most frequent; the others appear once or a few times.
    x[:100, 0] = 5.0
    distinct = len(np.unique(np.floor(x[:, 0] * 1000)))
    assert distinct > MAX_LABELS
    request = pb.ModelInferRequest(
        model_name="m",
        id="big",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[3000, 8])
        ],
        raw_input_contents=[x.tobytes()],
    )
    with grpc.insecure_channel(f"127.0.0.1:{sc.port}") as channel:
        pbg.GRPCInferenceServiceStub(channel).ModelInfer(request)
    wait_for(
        lambda: any(a.rows == 3000 for r, _ in calls for a in r.arms),
        30,
        "the window with the big request to be reported",
    )
    wait_for(lambda: sc.reporter.pending == 0, 30, "every report to be sent")
    assert [code for _, code in calls if code != "OK"] == []
    (big,) = [a for r, _ in calls for a in r.arms if a.rows == 3000]
    assert len(big.label_counts) == MAX_LABELS
    assert big.label_counts[5000] == 100
    # The rows of the labels left out are counted.
    assert sc.observer.labels_left_out == 3000 - sum(big.label_counts.values()) > 0
