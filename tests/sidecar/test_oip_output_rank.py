"""ModelMetadata gives an output that declares no shape the shape ONNX shape inference finds
for it, and one whose rank nothing determines ``[-1]`` (as Triton does), never ``[]``, which
would call it a scalar; a scalar output stays ``[]``. Answers carry their actual shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from sidecar_helpers import output_array, raw_request, stub

from modelplane.oip import grpc_service_pb2 as pb


def outputs_model(path: Path) -> Path:
    """``x`` FP32 [n], ``shp`` INT64 [k], ``z`` FP32 [m, 3] -> ``free`` = Reshape(x, shp)
    (rank unknown), ``relu`` = Relu(z) declared without a shape (inferred [m, 3]), ``total``
    = sum of x (a scalar). Warm-up's sample (zeros, [1] for x and shp) runs."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shp"], ["free"]),
            helper.make_node("Relu", ["z"], ["relu"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        ],
        "outputs",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("shp", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["m", 3]),
        ],
        [
            helper.make_tensor_value_info("free", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_metadata_gives_inferred_ranks_and_minus_one_for_an_unknown_rank(
    tmp_path: Path, sidecar_factory: Any
) -> None:
    handle = sidecar_factory(outputs_model(tmp_path / "outputs.onnx"))
    s = stub(handle.port)
    meta = s.ModelMetadata(pb.ModelMetadataRequest(name="outputs"), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("free", "FP32", [-1]),
        ("relu", "FP32", [-1, 3]),
        ("total", "FP32", []),
    ]
    free = handle.slot.current.signature.output("free")
    assert not free.ranked and free.described() == "[rank unknown]"
    x = np.arange(6, dtype=np.float32) - 2
    z = x.reshape(2, 3)
    shp = np.array([3, 2], np.int64)
    request = raw_request("outputs", {"x": ("FP32", x), "shp": ("INT64", shp), "z": ("FP32", z)})
    reply = s.ModelInfer(request, timeout=30)
    assert [(o.name, list(o.shape)) for o in reply.outputs] == [
        ("free", [3, 2]),
        ("relu", [2, 3]),
        ("total", []),
    ]
    assert np.array_equal(output_array(reply, 0, np.float32), x.reshape(3, 2))
    assert np.array_equal(output_array(reply, 1, np.float32), np.maximum(z, 0))
    assert output_array(reply, 2, np.float32) == x.sum()
