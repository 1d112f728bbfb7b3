"""A boolean training column served as a numeric 0/1 input counts in the baseline's true and
false categories, not as unseen categories "1" and "0"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper
from scipy import stats
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.profiles import CategoricalFeature, build_profile, load_baseline
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.drift import DriftMonitor


def _chi2(feature: CategoricalFeature, counts: dict[str, int]) -> float:
    known = list(feature.categories)
    table = np.array([list(feature.categories.values()), [counts.get(c, 0) for c in known]])
    return float(stats.chi2_contingency(table).statistic)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_numeric_zeros_and_ones_count_as_the_baselines_booleans(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    profile = build_profile(pa.table({"flag": rng.random(4_000) < 0.3}), [])
    feature = profile.features[0]
    assert isinstance(feature, CategoricalFeature) and set(feature.categories) == {"true", "false"}
    flags = (rng.random(500) < 0.3).astype(dtype)
    monitor = DriftMonitor(profile)
    monitor.update({"flag": flags})
    window = monitor.flush()
    got = monitor.score(window).features[0]
    trues = int(np.count_nonzero(flags))
    counts = dict(zip(feature.categories, window.categories[0].tolist(), strict=True))
    assert counts == {"true": trues, "false": 500 - trues}
    assert got.unseen_share == 0.0 and not got.drifted
    assert got.chi2_statistic == pytest.approx(_chi2(feature, counts), rel=1e-9)


def test_other_numbers_stay_unseen_and_csv_spellings_are_kept() -> None:
    rows = [f"{i},{'True' if i % 4 else 'False'}" for i in range(400)]
    profile = load_baseline(("x,flag\n" + "\n".join(rows) + "\n").encode())
    monitor = DriftMonitor(profile)
    flag = np.array([1.0, 0.0, 2.0, 0.5, np.nan, 1.0], dtype=np.float32)
    monitor.update({"x": np.arange(6, dtype=np.float64), "flag": flag})
    window = monitor.flush()
    counts = dict(zip(("False", "True"), window.categories[0].tolist(), strict=True))
    assert counts == {"False": 1, "True": 2}
    assert sorted(window.unseen[0]) == ["0.5", "2", "nan"]


def _two_inputs() -> Any:
    nodes, inputs, outputs = [], [], []
    for name in ("flag", "num"):
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["n"]))
    graph = helper.make_graph(nodes, "two_inputs", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_served_fp32_flag_reads_its_training_rows_as_unchanged(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    train = pa.table({"flag": rng.random(4_000) < 0.3, "num": rng.normal(size=4_000)})
    pq.write_table(train, tmp_path / "train.parquet")
    onnx.save(_two_inputs(), tmp_path / "two.onnx")
    profile = build_profile(train, [])
    handle = sidecar_factory(tmp_path / "two.onnx", baseline=tmp_path / "train.parquet")
    flags = (rng.random(500) < 0.3).astype(np.float32)
    nums = rng.normal(size=500).astype(np.float32)
    s = stub(handle.port)
    for lo in range(0, 500, 100):
        request = {"flag": ("FP32", flags[lo : lo + 100]), "num": ("FP32", nums[lo : lo + 100])}
        s.ModelInfer(raw_request("two", request), timeout=30)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))

    def report() -> Any:
        got = admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(), timeout=10)
        assert got.row_count == 500
        return got

    got = wait_for(report)
    flag = next(f for f in got.features if f.name == "flag")
    feature = profile.feature("flag")
    assert isinstance(feature, CategoricalFeature)
    trues = int(np.count_nonzero(flags))
    assert flag.count == 500 and flag.unseen_share == 0.0
    expected = _chi2(feature, {"true": trues, "false": 500 - trues})
    assert flag.chi2_statistic == pytest.approx(expected, rel=1e-9)
    assert not flag.drifted
