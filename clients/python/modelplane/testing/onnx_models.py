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


def query_key() -> onnx.ModelProto:
    """``out[n, m] = q[n, 2] @ k[m, 2]^T`` (FP32): ``q`` is one row per request row, ``k`` a
    side input whose first dim is independent of it."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
            helper.make_node("MatMul", ["q", "kt"], ["out"]),
        ],
        "query_key",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["m", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "m"])],
    )
    return _finish(graph, "query key")


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def resnet50(*, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50's graph ``image [-1, 3, 224, 224] -> output [-1, classes]`` (FP32, softmax).

    The v1.5 topology (bottleneck stages of 3, 4, 6 and 3 blocks, stride on the 3x3
    convolution, projection shortcuts) with batch normalisation folded into each convolution's
    bias, as an exported and optimised model has it: about 25.5M weights and 4.1 GFLOP per
    image. The weights are random (He-scaled): what it measures is the cost, not accuracy.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(
        x: str, name: str, c_in: int, c_out: int, k: int, stride: int, relu: bool, gain: float = 1
    ) -> str:
        w = rng.standard_normal((c_out, c_in, k, k)) * gain * np.sqrt(2.0 / (c_in * k * k))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}_b"))
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
        return f"{name}_r"

    x = conv("image", "stem", 3, 64, 7, 2, True)
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x, width = "pool", 64
    for stage, (blocks, mid) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        for block in range(blocks):
            name = f"s{stage}b{block}"
            stride = 2 if block == 0 and stage > 0 else 1
            y = conv(x, f"{name}a", width, mid, 1, 1, True)
            y = conv(y, f"{name}b", mid, mid, 3, stride, True)
            # A small last layer per residual branch (as a trained network's folded batch
            # norm has it) keeps activations bounded through the 16 blocks.
            y = conv(y, f"{name}c", mid, mid * 4, 1, 1, False, gain=0.2)
            shortcut = x
            if block == 0:
                shortcut = conv(x, f"{name}p", width, mid * 4, 1, stride, False)
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}_sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}_sum"], [f"{name}_out"]))
            x, width = f"{name}_out", mid * 4
    fc_w = rng.standard_normal((width, classes)) * np.sqrt(1.0 / width)
    inits.append(numpy_helper.from_array(fc_w.astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet50",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _finish(graph, f"resnet50 (folded batch norm) 224x224 -> {classes}")


def image_probe(*, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50's signature, ``image [-1, 3, 224, 224] -> output [-1, classes]`` (FP32), on a
    model that does almost nothing: global average pooling, then one small Gemm and a softmax.

    Serving it costs what an image-sized request costs a server (588 KiB in, 4 KiB out) with
    next to no compute, so a benchmark can tell the serving path's cost apart from the model's.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=1),
        ],
        "image_probe",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            numpy_helper.from_array(w, "fc_w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
        ],
    )
    return _finish(graph, f"image probe 224x224 -> {classes}")
