"""Inputs whose rows disagree: refused (``ROW_COUNT_MISMATCH``) when the model names their
first dims alike, served alone when it leaves them independent. Real sidecars on loopback,
real ONNX models; the log read back with pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper
from sidecar_helpers import output_array, raw_request, stub

from modelplane.errors import error_info
from modelplane.testing import onnx_models
from sidecar.predlog import PredictionLogSettings, read_logs

A = np.array([[1, 2], [3, 4]], np.float32)
B = np.array([[1, 2, 3], [4, 5, 6]], np.int64)


def sum_model(first_a: str | None, first_b: str | None) -> Any:
    """``a`` FP32 [first_a, 2], ``b`` INT64 [first_b, 3] -> ``y`` [first_a, 1] = row sums of
    a plus row sums of b (ONNX Runtime broadcasts a one-row input over the other's rows)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["a"], ["sa"], keepdims=1, axes=[1]),
            helper.make_node("ReduceSum", ["bf"], ["sb"], keepdims=1, axes=[1]),
            helper.make_node("Add", ["sa", "sb"], ["y"]),
        ],
        "sums",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [first_a, 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [first_b, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first_a, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    return model


def _request(a: np.ndarray, b: np.ndarray, rid: str) -> Any:
    return raw_request("sums", {"a": ("FP32", a), "b": ("INT64", b)}, id=rid)


@pytest.mark.parametrize(("a_rows", "b_rows"), [(2, 1), (1, 2)])
def test_inputs_sharing_a_named_first_dim_must_agree_on_rows(
    sidecar_factory: Any, tmp_path: Path, a_rows: int, b_rows: int
) -> None:
    model = onnx_models.save(sum_model("n", "n"), tmp_path / "sums.onnx")
    log = PredictionLogSettings(dir=tmp_path / "log", durability="sync")
    handle = sidecar_factory(model, model_name="sums", log_settings=log)
    s = stub(handle.port)
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(_request(A[:a_rows], B[:b_rows], "uneven"), timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info is not None and info.reason == "ROW_COUNT_MISMATCH", info
    assert info.metadata["tensors"] == "a,b"
    assert f"'a' has {a_rows} rows" in err.details() and f"'b' has {b_rows}" in err.details()
    assert "'n'" in err.details()
    # Rows that agree are answered as before.
    good = s.ModelInfer(_request(A, B, "even"), timeout=10)
    assert output_array(good, 0, np.float32).ravel().tolist() == [9.0, 22.0]
    handle.stop(5)
    logged = {r["request_id"]: r for r in read_logs(tmp_path / "log").to_pylist()}
    assert logged["uneven"]["status_reason"] == "ROW_COUNT_MISMATCH"


@pytest.mark.parametrize(("first_a", "first_b"), [(None, None), ("batch", "batch_size")])
def test_inputs_with_independent_first_dims_are_served_alone(
    sidecar_factory: Any, tmp_path: Path, first_a: str | None, first_b: str | None
) -> None:
    model = onnx_models.save(sum_model(first_a, first_b), tmp_path / "sums.onnx")
    handle = sidecar_factory(model, model_name="sums")
    s = stub(handle.port)
    answer = s.ModelInfer(_request(A, B[:1], "uneven"), timeout=10)
    assert output_array(answer, 0, np.float32).ravel().tolist() == [9.0, 13.0]


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_independent_rows_are_logged_under_the_model_s_columns(
    sidecar_factory: Any, tmp_path: Path, durability: str
) -> None:
    """A one-row input holds for every row of the other; the columns keep the names every
    record has (``a_j``, ``b_j``), so an excluded feature stays out of the log."""
    model = onnx_models.save(sum_model("batch", "batch_size"), tmp_path / "sums.onnx")
    log = PredictionLogSettings(
        dir=tmp_path / "log", durability=durability, exclude_features=("b_1",)
    )
    handle = sidecar_factory(model, model_name="sums", log_settings=log)
    s = stub(handle.port)
    b_secret = np.array([[7, 700, 9]], np.int64)
    a_one = A[:1]
    b_two = np.array([[1, 100, 3], [4, 400, 6]], np.int64)
    answers = {
        "even": s.ModelInfer(_request(A, B, "even"), timeout=10),
        "a2-b1": s.ModelInfer(_request(A, b_secret, "a2-b1"), timeout=10),
        "a1-b2": s.ModelInfer(_request(a_one, b_two, "a1-b2"), timeout=10),
    }
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    assert "b_1" not in table.column_names and not any(
        c.startswith("x_") for c in table.column_names
    ), table.column_names
    for column in table.column_names:  # no excluded value under any name
        values = table.column(column).to_pylist()
        assert 700 not in values and 100 not in values and 400 not in values, column
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in table.to_pylist():
        rows.setdefault(r["request_id"], []).append(r)
    expected_inputs = {
        "even": (A, B),
        "a2-b1": (A, np.repeat(b_secret, 2, axis=0)),
        "a1-b2": (np.repeat(a_one, 2, axis=0), b_two),
    }
    for rid, (a, b) in expected_inputs.items():
        got = sorted(rows[rid], key=lambda r: r["row"])
        assert [r["row"] for r in got] == [0, 1], rid
        answered = output_array(answers[rid], 0, np.float32).ravel().tolist()
        for j, r in enumerate(got):
            assert (r["a_0"], r["a_1"]) == (a[j, 0], a[j, 1]), rid
            assert (r["b_0"], r["b_2"]) == (b[j, 0], b[j, 2]), rid
            assert r["out_y"] == answered[j], rid
