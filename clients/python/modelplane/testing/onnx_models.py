"""Small ONNX models built with ``onnx.helper``, for tests and benchmarks.

Nothing is downloaded: weights come from a seeded random generator, so every build of the same
model is byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _finish(graph: onnx.GraphProto, name: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="modelplane.testing",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    model.doc_string = name
    onnx.checker.check_model(model)
    return model


def mlp(
    features: int = 32,
    hidden: tuple[int, ...] = (64,),
    outputs: int = 2,
    *,
    softmax: bool = True,
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "output",
    inverted: bool = False,
) -> onnx.ModelProto:
    """A dense ReLU network ``[-1, features] -> [-1, outputs]`` (FP32), softmax on the end.

    The default is the 32-feature MLP the performance notes use. ``inverted`` negates the last
    layer, so that a two-class model built with the same seed predicts the other class on
    every row (a deliberately broken candidate).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, width = input_name, features
    for i, h in enumerate((*hidden, outputs)):
        w = (rng.standard_normal((width, h)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(h) * 0.01).astype(np.float32)
        if inverted and i == len(hidden):
            w, b = -w, -b
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(hidden)
        out = f"z{i}" if not last or softmax else output_name
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"]))
            prev = f"a{i}"
        width = h
    if softmax:
        nodes.append(helper.make_node("Softmax", [f"z{len(hidden)}"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", outputs])],
        initializer=inits,
    )
    return _finish(graph, f"mlp {features}->{hidden}->{outputs}")


def faulty_classifier(features: int = 8) -> onnx.ModelProto:
    """A two-class model ``[-1, features] -> [-1, 2]`` that loads, warms up on zeros and then
    fails in ONNX Runtime on most real inputs: it looks up ``100 * x[:, 0]`` as an index into
    a two-row table, which is out of range for any ``|x[:, 0]| >= 0.03`` (a broken build)."""
    table = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    nodes = [
        helper.make_node("Slice", ["input", "zero", "one", "one"], ["first"]),
        helper.make_node("Mul", ["first", "hundred"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
        helper.make_node("Reshape", ["looked_up", "shape"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1, 2], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        initializer=inits,
    )
    return _finish(graph, "faulty classifier")


def heavy_mlp(seed: int = 0) -> onnx.ModelProto:
    """The compute-heavy MLP: 256 features, four hidden layers of 2,048, 10 outputs."""
    return mlp(256, (2048, 2048, 2048, 2048), 10, seed=seed)


_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_model(datatype: str, shape: list[int | str]) -> onnx.ModelProto:
    """``y = Identity(x)`` for one OIP datatype; string dims in ``shape`` are dynamic."""
    elem = _ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    return _finish(graph, f"identity {datatype}")


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def conv_net(
    *, channels: int = 128, blocks: int = 4, classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """An image model with ResNet-50's input ``[-1, 3, 224, 224]`` (FP32) and a similar cost.

    A 7x7 stride-2 stem, 2x2 max pooling, ``blocks`` 3x3 convolutions at 56x56 with
    ``channels`` channels, global average pooling and a dense layer to ``classes`` softmax
    outputs: about 3.5 GFLOP per image at the defaults (ResNet-50 needs about 4).
    """
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        return name

    def bias(name: str, n: int) -> str:
        inits.append(numpy_helper.from_array(np.zeros(n, np.float32), name))
        return name

    inits: list[onnx.TensorProto] = []
    stem = 64
    nodes = [
        helper.make_node(
            "Conv",
            ["image", weight("stem_w", stem, 3, 7, 7), bias("stem_b", stem)],
            ["stem"],
            kernel_shape=[7, 7],
            strides=[2, 2],
            pads=[3, 3, 3, 3],
        ),
        helper.make_node("Relu", ["stem"], ["stem_a"]),
        helper.make_node("MaxPool", ["stem_a"], ["x0"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    prev, width = "x0", stem
    for i in range(blocks):
        w, b = weight(f"c{i}_w", channels, width, 3, 3), bias(f"c{i}_b", channels)
        nodes.append(
            helper.make_node("Conv", [prev, w, b], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]))
        prev, width = f"x{i + 1}", channels
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node(
            "Gemm", ["flat", weight("fc_w", width, classes), bias("fc_b", classes)], ["logits"]
        ),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _finish(graph, f"conv_net {blocks}x{channels}ch 224x224 -> {classes}")
