"""Batching must not change an answer: a model whose output widths follow the values in the
rows (a slice to the largest index, StringSplit's padding) is served unbatched and answers
each request as it would alone, while ordinary models (skl2onnx classifiers, MLPs, an input
whose width the output copies) still batch under concurrency. Real ONNX models, real
sidecars on loopback, batch sizes read from the metrics endpoint."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import output_array, raw_request, stub

from modelplane.testing import onnx_models
from sidecar.signature import signature_of


def _model(graph: Any, opset: int = 17) -> Any:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    return model


def _slice_model() -> Any:
    """``x`` INT64 [n,4] -> ``y`` [n,L] = x[:, :max(x[:, 0])]: L is the batch's largest
    first column."""
    return _model(
        helper.make_graph(
            [
                helper.make_node("Gather", ["x", "zero"], ["first"], axis=1),
                helper.make_node("ReduceMax", ["first"], ["width"], keepdims=1),
                helper.make_node("Slice", ["x", "start", "width", "axis"], ["y"]),
            ],
            "slice_to_max",
            [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", "L"])],
            [
                numpy_helper.from_array(np.array(0, np.int64), "zero"),
                numpy_helper.from_array(np.array([0], np.int64), "start"),
                numpy_helper.from_array(np.array([1], np.int64), "axis"),
            ],
        )
    )


def _split_model() -> Any:
    """``s`` BYTES [n] -> ``words`` [n,M] (padded to the batch's most words), ``count`` [n]."""
    return _model(
        helper.make_graph(
            [helper.make_node("StringSplit", ["s"], ["words", "count"], delimiter=" ")],
            "split",
            [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
            [
                helper.make_tensor_value_info("words", TensorProto.STRING, ["n", "M"]),
                helper.make_tensor_value_info("count", TensorProto.INT64, ["n"]),
            ],
        ),
        opset=20,
    )


def _classifier() -> Any:
    """A skl2onnx logistic regression: ``label`` [n], ``probabilities`` [n,2]."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    skl2onnx = pytest.importorskip("skl2onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    clf = linear_model.LogisticRegression().fit(x, (x[:, 0] > 0).astype(np.int64))
    return skl2onnx.to_onnx(clf, x[:1], options={"zipmap": False})


def _signature(model: Any, path: Path) -> Any:
    saved = onnx_models.save(model, path)
    return signature_of(ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]))


def test_outputs_sized_by_the_values_make_a_model_unbatchable(tmp_path: Path) -> None:
    sliced = _signature(_slice_model(), tmp_path / "slice.onnx")
    assert not sliced.batchable
    assert "'y'" in sliced.unbatchable and "'L'" in sliced.unbatchable
    split = _signature(_split_model(), tmp_path / "split.onnx")
    assert not split.batchable and "'words'" in split.unbatchable
    for ordinary in (
        _classifier(),
        onnx_models.mlp(),
        onnx_models.identity_model("FP32", ["n", "m"]),
        onnx_models.identity_model("BYTES", ["n", 3]),
    ):
        signature = _signature(ordinary, tmp_path / "ordinary.onnx")
        assert signature.batchable, signature.unbatchable


def _concurrently(call: Any, requests: list[Any]) -> list[Any]:
    """Send ``requests`` at once, released together, and return each reply."""
    gate = threading.Barrier(len(requests))

    def one(request: Any) -> Any:
        gate.wait(10)
        return call(request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_a_slice_to_the_largest_value_answers_each_request_as_alone(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    path = onnx_models.save(_slice_model(), tmp_path / "slice.onnx")
    handle = sidecar_factory(path, max_batch_size=8, max_queue_delay=0.05)
    s = stub(handle.port)
    rows = [np.array([[w, 7, 8, 9]], np.int64) for w in (1, 3, 2, 4)]
    replies = _concurrently(
        lambda x: s.ModelInfer(raw_request("slice", {"x": ("INT64", x)}), timeout=10), rows
    )
    for x, reply in zip(rows, replies, strict=True):
        np.testing.assert_array_equal(output_array(reply, 0, np.int64), x[:, : x[0, 0]])
    assert handle.slot.current.batcher is None
    assert "'L'" in handle.slot.current.batching_off


def test_split_strings_are_padded_per_request(sidecar_factory: Any, tmp_path: Path) -> None:
    path = onnx_models.save(_split_model(), tmp_path / "split.onnx")
    handle = sidecar_factory(path, max_batch_size=8, max_queue_delay=0.05)
    s = stub(handle.port)
    texts = [np.array([t], object) for t in (b"hello", b"a b c d", b"x y", b"one two three")]
    replies = _concurrently(
        lambda t: s.ModelInfer(raw_request("split", {"s": ("BYTES", t)}), timeout=10), texts
    )
    for text, reply in zip(texts, replies, strict=True):
        assert list(reply.outputs[0].shape) == [1, len(text[0].split())]
    assert handle.slot.current.batcher is None


def _batch_sizes(port: int, model: str) -> tuple[float, float]:
    """How many session calls ran, and how many of them one row."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    count = single = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "modelplane_inference_batch_size_count":
                count = sample.value
            elif (
                sample.name == "modelplane_inference_batch_size_bucket"
                and sample.labels.get("le") == "1.0"
            ):
                single = sample.value
    return count, single


@pytest.mark.parametrize("kind", ["classifier", "mlp", "free_width"])
def test_ordinary_models_still_batch(sidecar_factory: Any, tmp_path: Path, kind: str) -> None:
    if kind == "classifier":
        model, name, width = _classifier(), "X", 4
    elif kind == "mlp":
        model, name, width = onnx_models.mlp(), "input", 32
    else:
        model, name, width = onnx_models.identity_model("FP32", ["n", "m"]), "x", 5
    path = onnx_models.save(model, tmp_path / f"{kind}.onnx")
    handle = sidecar_factory(
        path, max_batch_size=32, max_queue_delay=0.02, metrics_listen="127.0.0.1:0"
    )
    assert handle.slot.current.batcher is not None and handle.slot.current.batching_off is None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s = stub(handle.port)
    rng = np.random.default_rng(4)
    rows = [rng.standard_normal((1 + i % 3, width)).astype(np.float32) for i in range(24)]
    replies = _concurrently(
        lambda x: s.ModelInfer(raw_request(kind, {name: ("FP32", x)}), timeout=10), rows
    )
    for x, reply in zip(rows, replies, strict=True):
        want = session.run(None, {name: x})
        for i, out in enumerate(reply.outputs):
            dtype = np.int64 if out.datatype == "INT64" else np.float32
            np.testing.assert_allclose(output_array(reply, i, dtype), want[i], rtol=1e-5, atol=1e-6)
    count, single = _batch_sizes(handle.metrics_port, kind)
    assert count > single, "no session call ran more than one row"
