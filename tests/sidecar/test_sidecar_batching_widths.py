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

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import output_array, raw_request, stub

from modelplane.errors import error_info
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


def _attention(named: bool) -> Any:
    """``out[n, 2] = softmax(q @ k^T) @ k``: each query attends over its own request's keys
    ``k[m, 2]``; with ``n`` and ``m`` unnamed the signature looks like two row inputs."""
    n, m = ("n", "m") if named else (None, None)
    return _model(
        helper.make_graph(
            [
                helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
                helper.make_node("MatMul", ["q", "kt"], ["scores"]),
                helper.make_node("Softmax", ["scores"], ["w"], axis=1),
                helper.make_node("MatMul", ["w", "k"], ["out"]),
            ],
            "attend",
            [
                helper.make_tensor_value_info("q", TensorProto.FLOAT, [n, 2]),
                helper.make_tensor_value_info("k", TensorProto.FLOAT, [m, 2]),
            ],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [n, 2])],
        )
    )


def _nms() -> Any:
    """NonMaxSuppression keeping one box per class: ``selected[num_selected, 3]`` holds the
    batch index of each kept box, counted over the whole call."""
    return _model(
        helper.make_graph(
            [helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep"], ["selected"])],
            "nms",
            [
                helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 1, 4]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1, 1]),
            ],
            [helper.make_tensor_value_info("selected", TensorProto.INT64, ["num_selected", 3])],
            [numpy_helper.from_array(np.array([1], np.int64), "keep")],
        )
    )


def _two_columns() -> Any:
    """A skl2onnx pipeline over two one-column inputs ``a`` and ``b`` (first dims unnamed, as
    skl2onnx writes them): batchable, although the signature alone cannot tell it from
    :func:`_attention` without names."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pandas = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    frame = pandas.DataFrame(rng.standard_normal((200, 2)).astype(np.float32), columns=["a", "b"])
    pipe = Pipeline(
        [
            ("columns", ColumnTransformer([("scale", StandardScaler(), ["a", "b"])])),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, (frame.a + frame.b > 0).astype(np.int64))
    types = [("a", FloatTensorType([None, 1])), ("b", FloatTensorType([None, 1]))]
    return skl2onnx.convert_sklearn(
        pipe, initial_types=types, options={id(pipe): {"zipmap": False}}
    )


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_attention_over_each_requests_own_keys_is_served_unbatched(
    sidecar_factory: Any, tmp_path: Path, named: bool
) -> None:
    """Rows of equal counts in both inputs stacked would attend over each other's keys: the
    load-time check finds that out and each request is answered as it would be alone."""
    path = onnx_models.save(_attention(named), tmp_path / "attend.onnx")
    assert _signature(_attention(named), tmp_path / "sig.onnx").batchable  # names cannot tell
    handle = sidecar_factory(path, max_batch_size=8, max_queue_delay=0.05)
    assert handle.slot.current.batcher is None
    assert "'out'" in handle.slot.current.batching_off
    assert "depend on the other rows" in handle.slot.current.batching_off
    s = stub(handle.port)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    feeds = [
        {
            "q": rng.standard_normal((2, 2)).astype(np.float32),
            "k": np.full((2, 2), 10.0 * i, np.float32) + rng.standard_normal((2, 2)).astype("f4"),
        }
        for i in range(4)
    ]
    replies = _concurrently(
        lambda f: s.ModelInfer(
            raw_request("attend", {"q": ("FP32", f["q"]), "k": ("FP32", f["k"])}), timeout=10
        ),
        feeds,
    )
    for feed, reply in zip(feeds, replies, strict=True):
        (want,) = session.run(None, feed)
        np.testing.assert_allclose(output_array(reply, 0, np.float32), want, rtol=1e-5, atol=1e-6)


def test_an_output_counting_rows_over_the_whole_call_is_served_unbatched(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    path = onnx_models.save(_nms(), tmp_path / "nms.onnx")
    handle = sidecar_factory(path, max_batch_size=8, max_queue_delay=0.05)
    assert handle.slot.current.batcher is None
    assert "'selected'" in handle.slot.current.batching_off
    s = stub(handle.port)
    boxes = np.array([[[0, 0, 1, 1]]], np.float32)
    scores = np.array([[[0.9]]], np.float32)
    replies = _concurrently(
        lambda _: s.ModelInfer(
            raw_request("nms", {"boxes": ("FP32", boxes), "scores": ("FP32", scores)}), timeout=10
        ),
        list(range(4)),
    )
    for reply in replies:
        np.testing.assert_array_equal(output_array(reply, 0, np.int64).reshape(-1, 3), [[0, 0, 0]])


def test_a_pipeline_over_unnamed_column_inputs_still_batches(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    path = onnx_models.save(_two_columns(), tmp_path / "columns.onnx")
    handle = sidecar_factory(
        path, max_batch_size=32, max_queue_delay=0.02, metrics_listen="127.0.0.1:0"
    )
    assert handle.slot.current.batching_off is None and handle.slot.current.batcher is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s = stub(handle.port)
    rng = np.random.default_rng(6)
    feeds = [
        {n: rng.standard_normal((1 + i % 3, 1)).astype(np.float32) for n in ("a", "b")}
        for i in range(24)
    ]
    replies = _concurrently(
        lambda f: s.ModelInfer(
            raw_request("columns", {"a": ("FP32", f["a"]), "b": ("FP32", f["b"])}), timeout=10
        ),
        feeds,
    )
    for feed, reply in zip(feeds, replies, strict=True):
        label, probabilities = session.run(None, feed)
        np.testing.assert_array_equal(output_array(reply, 0, np.int64), label)
        np.testing.assert_allclose(
            output_array(reply, 1, np.float32).reshape(probabilities.shape),
            probabilities,
            rtol=1e-5,
            atol=1e-6,
        )
    count, single = _batch_sizes(handle.metrics_port, "columns")
    assert count > single, "no session call ran more than one row"


def test_a_side_input_may_have_no_rows(sidecar_factory: Any, tmp_path: Path) -> None:
    """``k`` of ``query_key`` counts keys, not the request's rows: zero keys is a valid
    request (ONNX Runtime answers ``out[n, 0]``); zero queries is still an empty batch."""
    path = onnx_models.save(onnx_models.query_key(), tmp_path / "qk.onnx")
    handle = sidecar_factory(path)
    s = stub(handle.port)
    q = np.ones((2, 2), np.float32)
    reply = s.ModelInfer(
        raw_request("qk", {"q": ("FP32", q), "k": ("FP32", np.zeros((0, 2), np.float32))}),
        timeout=10,
    )
    assert list(reply.outputs[0].shape) == [2, 0]
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(
            raw_request(
                "qk",
                {"q": ("FP32", np.zeros((0, 2), np.float32)), "k": ("FP32", q)},
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "EMPTY_BATCH" and "'q'" in err.value.details()


def test_the_stacking_check_allows_rounding_but_not_different_answers(tmp_path: Path) -> None:
    from sidecar.batch_check import stacking_changes_answers

    signature = _signature(onnx_models.mlp(), tmp_path / "mlp.onnx")

    def per_row(outputs: Any, feeds: Any, noise: float = 0.0) -> Any:
        x = feeds["input"].astype(np.float64)
        out = x.sum(axis=1, keepdims=True) * (1 + noise * x.shape[0])
        return [out.astype(np.float32)]

    assert stacking_changes_answers(signature, per_row) is None
    rounding = stacking_changes_answers(signature, lambda o, f: per_row(o, f, 1e-6))
    assert rounding is None
    mixing = stacking_changes_answers(
        signature, lambda o, f: [per_row(o, f)[0] + f["input"].mean()]
    )
    assert mixing is not None and "depend on the other rows" in mixing
    assert "alone by up to " in mixing
    fewer = stacking_changes_answers(signature, lambda o, f: [per_row(o, f)[0][:2]])
    assert fewer is not None and "has 2 rows for 5 stacked input rows" in fewer

    def fails_alone(outputs: Any, feeds: Any) -> Any:
        raise RuntimeError("indices out of range")

    # A model that cannot run the sample rows at all: the signature decides.
    assert stacking_changes_answers(signature, fails_alone) is None

    def fails_stacked(outputs: Any, feeds: Any) -> Any:
        if feeds["input"].shape[0] > 3:
            raise RuntimeError("shape mismatch")
        return per_row(outputs, feeds)

    refused = stacking_changes_answers(signature, fails_stacked)
    assert refused is not None and "fails on the two stacked: shape mismatch" in refused
