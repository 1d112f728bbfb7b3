"""A refused request is logged with its features as far as they could be decoded: each input
that decodes against the model's signature (shape fitting the version's columns, datatype
and contents whole), excluded features left out; inputs that do not fit stay null. Real
sidecars (standalone in every durability and observer mode, and managed by a real control
plane) on loopback, real ONNX models, the log read back with pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, rows_by_request, stub

from modelplane.oip import grpc_service_pb2 as pb
from sidecar.predlog import (
    PredictionLogSettings,
    RejectedRequest,
    open_prediction_log,
    read_logs,
)

NAMES = [f"f{i}" for i in range(32)]
MODES = [("async", "thread"), ("async", "process"), ("sync", "thread")]


@pytest.mark.parametrize(("durability", "mode"), MODES)
def test_refused_requests_are_logged_with_the_inputs_that_decoded(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    handle = sidecar_factory(
        model_dir / "two.onnx",
        log_settings=PredictionLogSettings(
            dir=tmp_path / "log",
            durability=durability,
            flush_interval=0.02,
            exclude_features=("a_1",),
        ),
        observer_mode=mode,
    )
    s = stub(handle.port)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    good_b = np.arange(4, dtype=np.int64).reshape(2, 2)
    # b has a column too many: a decodes and is logged, b does not fit b_0, b_1.
    wrong_b = raw_request(
        "two", {"a": ("FP32", a), "b": ("INT64", np.ones((2, 3), np.int64))}, id="wrong-b"
    )
    # An input the model does not take: both of its own inputs decode.
    extra = raw_request(
        "two",
        {"a": ("FP32", a), "b": ("INT64", good_b), "c": ("FP32", np.ones((2, 1), np.float32))},
        id="extra",
    )
    # a's width does not fit a_0..a_3: no feature of it is logged (nor can exclusion apply).
    wide_a = raw_request(
        "two",
        {"a": ("FP32", np.ones((2, 5), np.float32)), "b": ("INT64", good_b)},
        id="wide-a",
    )
    # Typed contents of the wrong count for b: b does not decode, a does.
    typed = pb.ModelInferRequest(model_name="two", id="typed")
    typed.inputs.add(name="a", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        a.reshape(-1).tolist()
    )
    typed.inputs.add(name="b", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend(
        [1, 2, 3]
    )
    # Addressed to another model: nothing is decoded against this one.
    other = raw_request("nope", {"a": ("FP32", a), "b": ("INT64", good_b)}, id="other")
    for request in (wrong_b, extra, wide_a, typed, other):
        with pytest.raises(grpc.RpcError) as err:
            s.ModelInfer(request, timeout=30)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    handle.stop(5)

    table = read_logs(tmp_path / "log")
    assert "a_1" not in table.column_names
    logged = rows_by_request(table)
    assert set(logged) == {"wrong-b", "extra", "wide-a", "typed", "other"}
    reasons = {rid: {r["status_reason"] for r in rows} for rid, rows in logged.items()}
    assert reasons == {
        "wrong-b": {"WRONG_SHAPE"},
        "extra": {"UNKNOWN_INPUT"},
        "wide-a": {"WRONG_SHAPE"},
        "typed": {"CONTENTS_SIZE_MISMATCH"},
        "other": {"MODEL_NOT_FOUND"},
    }
    kept = ["a_0", "a_2", "a_3"]
    for rid in ("wrong-b", "extra", "typed"):
        rows = logged[rid]
        assert [r["row"] for r in rows] == [0, 1]
        assert [[r[n] for n in kept] for r in rows] == a[:, [0, 2, 3]].tolist()
    assert [[r["b_0"], r["b_1"]] for r in logged["extra"]] == good_b.tolist()
    assert all(r["b_0"] is None for rid in ("wrong-b", "typed") for r in logged[rid])
    assert "c" not in table.column_names
    # Only b fits: its rows are logged, a's features null.
    assert [[r["b_0"], r["b_1"]] for r in logged["wide-a"]] == good_b.tolist()
    assert all(r[n] is None for r in logged["wide-a"] for n in kept)
    assert len(logged["other"]) == 1 and logged["other"][0]["a_0"] is None
    # Nothing of a wrong width reaches the log under x_j names.
    assert not any(c.startswith("x_") for c in table.column_names)


@pytest.mark.parametrize(("durability", "mode"), MODES)
def test_named_features_of_a_refused_request_are_logged_and_excluded_as_named(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        log_settings=PredictionLogSettings(
            dir=tmp_path / "log",
            durability=durability,
            flush_interval=0.02,
            exclude_features=("f1", "f30"),
        ),
        feature_names=tuple(NAMES),
        observer_mode=mode,
        reject_non_finite=True,
    )
    s = stub(handle.port)
    x = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    x[1, 5] = np.nan
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id="nan"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wide = raw_request("mlp", {"input": ("FP32", np.full((2, 33), 7, np.float32))}, id="wide")
    with pytest.raises(grpc.RpcError):
        s.ModelInfer(wide, timeout=30)
    handle.stop(5)

    table = read_logs(tmp_path / "log")
    assert "f1" not in table.column_names and "f30" not in table.column_names
    logged = rows_by_request(table)
    kept = [n for n in NAMES if n not in ("f1", "f30")]
    rows = logged["nan"]
    assert {r["status_reason"] for r in rows} == {"NON_FINITE_VALUE"}
    got = np.array([[r[n] for n in kept] for r in rows], np.float32)
    np.testing.assert_array_equal(got, np.delete(x, [1, 30], axis=1))
    # 33 values do not fit the 32 named columns: one record, its features null.
    assert len(logged["wide"]) == 1
    assert all(logged["wide"][0][n] is None for n in kept)


def test_a_managed_sidecar_logs_a_refused_requests_features_under_its_version(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    real_plane.deploy({1: artifacts[1]})
    handle = real_managed(
        log_settings=PredictionLogSettings(
            dir=tmp_path / "log", flush_interval=0.02, exclude_features=("x_2",)
        )
    )
    assert handle.wait_ready(60)
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    request = raw_request(
        "fraud",
        {"input": ("FP32", x), "extra": ("FP32", np.ones((2, 1), np.float32))},
        id="extra",
    )
    with pytest.raises(grpc.RpcError) as err:
        stub(handle.port).ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    assert "x_2" not in table.column_names
    rows = rows_by_request(table)["extra"]
    assert [(r["arm"], r["model_version"], r["status_reason"]) for r in rows] == [
        ("champion", "1", "UNKNOWN_INPUT")
    ] * 2
    kept = [j for j in range(8) if j != 2]
    got = np.array([[r[f"x_{j}"] for j in kept] for r in rows], np.float32)
    np.testing.assert_array_equal(got, x[:, kept])


def test_the_writer_leaves_out_an_input_whose_width_its_excluded_names_do_not_fit(
    tmp_path: Path,
) -> None:
    names = ["age", "ssn", "c", "e"]
    settings = PredictionLogSettings(dir=tmp_path / "log", exclude_features=("ssn",))
    with open_prediction_log(settings) as writer:
        for rid, width in (("fits", 4), ("wide", 5)):
            x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
            request = RejectedRequest(
                rid, "INVALID_ARGUMENT", "BAD", inputs={"input": x}, feature_names=names
            )
            writer.append_rejected(request)
    table = read_logs(tmp_path / "log")
    # Which of the five columns holds ssn is unknown: none of them is written.
    assert "ssn" not in table.column_names
    assert not any(c.startswith("x_") for c in table.column_names)
    logged = rows_by_request(table)
    assert all(r["age"] is None for r in logged["wide"])
    assert [[r["age"], r["c"], r["e"]] for r in logged["fits"]] == [
        [0.0, 2.0, 3.0],
        [4.0, 6.0, 7.0],
    ]


def _open_width_model(path: Path) -> Path:
    """Inputs ``a [N, 3]`` and ``b [N, M]`` (an open width), ``y = sum(a) + sum(b)``."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["a", "axes"], ["sa"], keepdims=1),
            helper.make_node("ReduceSum", ["b", "axes"], ["sb"], keepdims=1),
            helper.make_node("Add", ["sa", "sb"], ["y"]),
        ],
        "open_width",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "M"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_an_excluded_column_of_an_open_width_input_stays_out_of_a_refused_record(
    sidecar_factory: Any, tmp_path: Path, mode: str
) -> None:
    """Beside another table, an open-width input's columns are `b_j` in every record: in a
    refused request whose only decoded input it is too, so `b_3` excluded stays out."""
    handle = sidecar_factory(
        _open_width_model(tmp_path / "open_width.onnx"),
        log_settings=PredictionLogSettings(
            dir=tmp_path / "log", flush_interval=0.02, exclude_features=("b_3",)
        ),
        observer_mode=mode,
    )
    s = stub(handle.port)
    b = np.array([[1, 2, 3, 999]], np.float32)
    s.ModelInfer(
        raw_request("open_width", {"a": ("FP32", np.ones((1, 3), np.float32)), "b": ("FP32", b)}),
        timeout=30,
    )
    refused = raw_request(
        "open_width", {"a": ("FP32", np.ones((1, 2), np.float32)), "b": ("FP32", b)}, id="bad-a"
    )
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(refused, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    assert "b_3" not in table.column_names and not any(
        n.startswith("x_") for n in table.column_names
    )
    rows = rows_by_request(table)["bad-a"]
    assert [(r["b_0"], r["b_1"], r["b_2"]) for r in rows] == [(1.0, 2.0, 3.0)]
    assert all(999.0 not in r.values() for r in table.to_pylist())


def test_a_request_shed_for_load_is_one_record_without_features(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    """A request refused for what it holds is logged with its rows; one shed for load (here
    its deadline passing in the batch queue) is one record with null features, so that an
    overloaded sidecar does not also write every row it did not serve."""
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx",
        max_batch_size=64,
        max_queue_delay=0.5,
        log_settings=PredictionLogSettings(dir=tmp_path / "log", flush_interval=0.02),
        observer_mode="thread",
    )
    s = stub(handle.port)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    s.ModelInfer(raw_request("id_fp32", {"x": ("FP32", x)}, id="served"), timeout=10)
    shed = raw_request("id_fp32", {"x": ("FP32", x)}, id="shed")
    shed.parameters["timeout"].int64_param = 1  # microseconds: expires in the queue
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(shed, timeout=10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    handle.stop(5)
    logged = rows_by_request(read_logs(tmp_path / "log"))
    assert [r["x_2"] for r in logged["served"]] == [float(3 * i + 2) for i in range(8)]
    rows = logged["shed"]
    assert len(rows) == 1
    assert rows[0]["status_reason"] == "DEADLINE_EXCEEDED_IN_QUEUE"
    assert all(rows[0][f"x_{j}"] is None for j in range(3))
