"""Models with an output that is not one row per input row (a scalar): the output is logged
on every row of its request, and drift keeps counting the features. Real sidecars on
loopback, a real ONNX model, the log read back with pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.testing import onnx_models
from sidecar.predlog import PredictionLogSettings, read_logs


def _scalar_output_model() -> Any:
    """``x`` FP32 [n,3] -> ``y`` = x (per row) and ``s`` = the sum of all of x (a scalar)."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["y"]),
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        ],
        "scalar_output",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _log(tmp_path: Path, durability: Any) -> PredictionLogSettings:
    return PredictionLogSettings(dir=tmp_path / "log", durability=durability, flush_interval=0.05)


@pytest.mark.parametrize(
    ("durability", "mode"), [("sync", "thread"), ("async", "thread"), ("async", "process")]
)
def test_a_scalar_output_is_logged_on_every_row_of_its_request(
    sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    model = onnx_models.save(_scalar_output_model(), tmp_path / "scalar.onnx")
    handle = sidecar_factory(model, log_settings=_log(tmp_path, durability), observer_mode=mode)
    s = stub(handle.port)
    sent = {}
    for i in range(3):
        x = np.arange(6, dtype=np.float32).reshape(2, 3) + i
        sent[f"r{i}"] = x
        reply = s.ModelInfer(raw_request("scalar", {"x": ("FP32", x)}, id=f"r{i}"), timeout=10)
        assert [o.name for o in reply.outputs] == ["y", "s"]
    handle.stop(5)
    table = read_logs(tmp_path / "log").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table.num_rows == 6
    assert set(table["status_code"].to_pylist()) == {"OK"}
    for rid, x in sent.items():
        rows = table.filter(pa.compute.equal(table["request_id"], rid))
        assert rows["out_s"].to_pylist() == [float(x.sum())] * 2
        assert rows["x_1"].to_pylist() == x[:, 1].tolist()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_drift_counts_the_rows_of_a_model_with_a_scalar_output(
    sidecar_factory: Any, tmp_path: Path, mode: str
) -> None:
    rng = np.random.default_rng(3)
    baseline = tmp_path / "train.parquet"
    pq.write_table(pa.table({n: rng.standard_normal(500) for n in "abc"}), baseline)
    model = onnx_models.save(_scalar_output_model(), tmp_path / "scalar.onnx")
    handle = sidecar_factory(
        model, log_settings=_log(tmp_path, "async"), observer_mode=mode, baseline=baseline
    )
    s = stub(handle.port)
    for i in range(5):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        s.ModelInfer(raw_request("scalar", {"x": ("FP32", x)}, id=f"r{i}"), timeout=10)

    def counted() -> Any:
        report = handle.slot.current.drift.current()[1]
        assert report.rows == 10
        return report

    report = wait_for(counted, timeout=10)
    assert [f.name for f in report.features] == ["a", "b", "c"]
    handle.stop(5)
    assert read_logs(tmp_path / "log").num_rows == 10
