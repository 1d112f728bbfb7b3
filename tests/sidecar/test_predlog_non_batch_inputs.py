"""Models with an input that is not one row per request row (a fixed ``w[3]``, a scalar, a
second input whose first dim the model names apart): requests are answered with the log on in
either durability, the request's rows come from its row inputs alone, and the log holds those
rows with the other inputs left out. Real sidecars on loopback, real ONNX models, the log read
back with pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from onnx import TensorProto, helper
from sidecar_helpers import output_array, raw_request, stub

from modelplane.testing import onnx_models
from sidecar.codec import Limits, decode
from sidecar.predlog import PredictionLogSettings, read_logs
from sidecar.signature import signature_of


def _model(graph: Any) -> Any:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weights_model() -> Any:
    """``x`` FP32 [n,3], ``w`` FP32 [3] -> ``y`` = x * w."""
    return _model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "w"], ["y"])],
            "weights",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        )
    )


def _scale_model() -> Any:
    """``x`` FP32 [n,2], ``s`` FP32 [] -> ``y`` = x * s."""
    return _model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "s"], ["y"])],
            "scale",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        )
    )


def _per_input_names_model() -> Any:
    """``a`` FP32 [batch,4] and ``b`` FP32 [batch_size,2], each rows though named apart (as
    exporters name dynamic axes per input) -> ``ya`` [batch,4], ``yb`` [batch_size,2]."""
    return _model(
        helper.make_graph(
            [helper.make_node("Identity", ["a"], ["ya"]), helper.make_node("Neg", ["b"], ["yb"])],
            "per_input_names",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch_size", 2]),
            ],
            [
                helper.make_tensor_value_info("ya", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("yb", TensorProto.FLOAT, ["batch_size", 2]),
            ],
        )
    )


def test_inputs_naming_their_rows_apart_are_all_rows_and_batch(tmp_path: Path) -> None:
    sig = _signature(_per_input_names_model(), tmp_path / "pin.onnx")
    assert [t.per_row for t in sig.inputs] == [True, True]
    assert sig.unbatchable is None
    limits = Limits(max_request_rows=1000, max_tensor_elements=1 << 20)
    a, b = np.ones((3, 4), np.float32), np.ones((3, 2), np.float32)
    even = decode(raw_request("pin", {"a": ("FP32", a), "b": ("FP32", b)}), sig, limits)
    assert even.rows == 3 and even.key is not None
    # Rows that disagree run alone.
    uneven = decode(raw_request("pin", {"a": ("FP32", a), "b": ("FP32", b[:2])}), sig, limits)
    assert uneven.key is None


def _signature(model: Any, path: Path) -> Any:
    saved = onnx_models.save(model, path)
    return signature_of(ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]))


def _request(model: str, x: np.ndarray, extra: str, value: np.ndarray, rid: str) -> Any:
    return raw_request(model, {"x": ("FP32", x), extra: ("FP32", value)}, id=rid)


def test_rows_are_counted_from_the_row_inputs_alone(tmp_path: Path) -> None:
    limits = Limits(max_request_rows=1000, max_tensor_elements=1 << 20)
    weights = _signature(_weights_model(), tmp_path / "w.onnx")
    scale = _signature(_scale_model(), tmp_path / "s.onnx")
    query_key = _signature(onnx_models.query_key(), tmp_path / "qk.onnx")
    assert [t.per_row for t in weights.inputs] == [True, False]
    assert [t.per_row for t in scale.inputs] == [True, False]
    assert [t.per_row for t in query_key.inputs] == [True, False]
    w = np.array([1, 2, 3], np.float32)
    for rows in (5, 3, 1):
        x3 = np.ones((rows, 3), np.float32)
        assert decode(_request("weights", x3, "w", w, "a"), weights, limits).rows == rows
        x2 = np.ones((rows, 2), np.float32)
        s = np.array(3, np.float32)
        assert decode(_request("scale", x2, "s", s, "b"), scale, limits).rows == rows
        k = np.ones((4, 2), np.float32)
        q = raw_request("query_key", {"q": ("FP32", x2), "k": ("FP32", k)})
        assert decode(q, query_key, limits).rows == rows


def _log(tmp_path: Path, durability: str) -> PredictionLogSettings:
    return PredictionLogSettings(
        dir=tmp_path / "log",
        durability=durability,  # type: ignore[arg-type]
        flush_interval=0.05,
    )


@pytest.mark.parametrize(
    ("durability", "mode"), [("sync", "thread"), ("async", "thread"), ("async", "process")]
)
def test_a_fixed_input_is_left_out_of_the_log_and_every_request_answers(
    sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    model = onnx_models.save(_weights_model(), tmp_path / "weights.onnx")
    handle = sidecar_factory(model, log_settings=_log(tmp_path, durability), observer_mode=mode)
    s = stub(handle.port)
    w = np.array([1, 2, 3], np.float32)
    sent = {}
    for i, rows in enumerate((5, 3, 5, 1)):
        x = np.arange(3 * rows, dtype=np.float32).reshape(rows, 3) + i
        sent[f"r{i}"] = x
        reply = s.ModelInfer(_request("weights", x, "w", w, f"r{i}"), timeout=10)
        np.testing.assert_array_equal(output_array(reply, 0, np.float32), x * w)
    handle.stop(5)
    table = read_logs(tmp_path / "log").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table.num_rows == 14
    assert set(table["status_code"].to_pylist()) == {"OK"}
    assert "w" not in table.column_names
    for rid, x in sent.items():
        rows = table.filter(pa.compute.equal(table["request_id"], rid))
        assert rows["row"].to_pylist() == list(range(len(x)))
        assert rows["x_2"].to_pylist() == x[:, 2].tolist()
        assert rows["out_y"].to_pylist() == (x * w).tolist()


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_scalar_input_is_left_out_of_the_log_and_every_request_answers(
    sidecar_factory: Any, tmp_path: Path, durability: str
) -> None:
    model = onnx_models.save(_scale_model(), tmp_path / "scale.onnx")
    handle = sidecar_factory(model, log_settings=_log(tmp_path, durability), observer_mode="thread")
    s = stub(handle.port)
    for i, rows in enumerate((2, 1)):
        x = np.ones((rows, 2), np.float32) * (i + 1)
        request = _request("scale", x, "s", np.array(3, np.float32), f"r{i}")
        assert list(request.inputs[1].shape) == []
        reply = s.ModelInfer(request, timeout=10)
        np.testing.assert_array_equal(output_array(reply, 0, np.float32), x * 3)
    handle.stop(5)
    table = read_logs(tmp_path / "log").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table["request_id"].to_pylist() == ["r0", "r0", "r1"]
    assert set(table["status_code"].to_pylist()) == {"OK"}
    assert "s" not in table.column_names
    assert table["out_y"].to_pylist() == [[3.0, 3.0], [3.0, 3.0], [6.0, 6.0]]


def test_an_input_named_apart_from_the_rows_is_left_out_of_the_log(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    model = onnx_models.save(onnx_models.query_key(), tmp_path / "qk.onnx")
    handle = sidecar_factory(model, log_settings=_log(tmp_path, "sync"), observer_mode="thread")
    s = stub(handle.port)
    q = np.arange(6, dtype=np.float32).reshape(3, 2)
    for i, keys in enumerate((3, 5)):
        k = np.ones((keys, 2), np.float32)
        reply = s.ModelInfer(
            raw_request("qk", {"q": ("FP32", q), "k": ("FP32", k)}, id=f"r{i}"), timeout=10
        )
        assert list(reply.outputs[0].shape) == [3, keys]
    handle.stop(5)
    table = read_logs(tmp_path / "log").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table["request_id"].to_pylist() == ["r0"] * 3 + ["r1"] * 3
    assert "k" not in table.column_names
    assert table["x_1"].to_pylist() == q[:, 1].tolist() * 2
    assert [len(v) for v in table["out_out"].to_pylist()] == [3] * 3 + [5] * 3


def test_a_request_whose_row_inputs_disagree_is_refused_and_logged_as_one_row(
    sidecar_factory: Any, model_dir: Path, tmp_path: Path
) -> None:
    """``two`` (``a[n,4]``, ``b[n,2]``) names both first dims ``n``, so inputs of different
    row counts are refused (ONNX Runtime would run them): the refusal is one record without
    its tensors (which are not rows), and the request after it is logged row by row."""
    handle = sidecar_factory(
        model_dir / "two.onnx", log_settings=_log(tmp_path, "sync"), observer_mode="thread"
    )
    s = stub(handle.port)
    a = np.ones((3, 4), np.float32)
    b = np.arange(4, dtype=np.int64).reshape(2, 2)
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(
            raw_request("two", {"a": ("FP32", a), "b": ("INT64", b)}, id="uneven"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    s.ModelInfer(
        raw_request("two", {"a": ("FP32", a[:2]), "b": ("INT64", b)}, id="even"), timeout=10
    )
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    by_id = {
        rid: table.filter(pa.compute.equal(table["request_id"], rid)) for rid in ("uneven", "even")
    }
    assert by_id["uneven"].num_rows == 1 and by_id["even"].num_rows == 2
    assert by_id["uneven"]["status_reason"].to_pylist() == ["ROW_COUNT_MISMATCH"]
    assert by_id["even"]["status_code"].to_pylist() == ["OK", "OK"]
    assert by_id["uneven"]["out_square"].to_pylist() == [None]
    assert by_id["uneven"]["a_0"].to_pylist() == [None]
    assert by_id["even"]["out_square"].to_pylist() == [[0, 1], [4, 9]]
    assert by_id["even"]["out_total"].to_pylist() == [4.0, 4.0]
