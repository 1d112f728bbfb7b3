"""An output whose width varies (declared ``[-1, -1]``) is a list column in every record, even
for a request one wide, so that all of a version's files read back together; an output
declared one value per row stays a plain column. Real sidecars on loopback, real ONNX
models, every log file read back with pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, stub

from modelplane.testing import onnx_models
from sidecar.predlog import PredictionLogSettings, list_log_files, read_file_batches, read_logs


@pytest.mark.parametrize(
    ("durability", "mode"), [("async", "thread"), ("async", "process"), ("sync", "thread")]
)
def test_a_varying_output_width_is_a_list_in_every_file(
    sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    model = onnx_models.save(onnx_models.identity_model("FP32", ["n", "m"]), tmp_path / "f.onnx")
    log_dir = tmp_path / "log"
    handle = sidecar_factory(
        model,
        log_settings=PredictionLogSettings(dir=log_dir, durability=durability, flush_interval=0.02),
        observer_mode=mode,
    )
    s = stub(handle.port)
    sent = {}
    for i, width in enumerate([2, 1, 3, 1]):
        x = np.arange(width, dtype=np.float32).reshape(1, width) + 10 * i
        sent[f"w{i}"] = x
        s.ModelInfer(raw_request("f", {"x": ("FP32", x)}, id=f"w{i}"), timeout=10)
    handle.stop(0)
    for path in list_log_files(log_dir):
        for batch in read_file_batches(path):
            # A fixed-size list, or a list where a file took several widths.
            kind = batch.schema.field("out_y").type
            assert pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind), path
    table = read_logs(log_dir)
    assert pa.types.is_list(table.schema.field("out_y").type)
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    assert set(by_id) == set(sent)
    for rid, x in sent.items():
        assert by_id[rid]["out_y"] == x[0].tolist()
        # The input is x_0..x_{w-1}: one float column each, null beyond a request's width.
        assert [by_id[rid][f"x_{j}"] for j in range(x.shape[1])] == x[0].tolist()


def test_an_output_declared_one_wide_stays_a_plain_column(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = sidecar_factory(
        model_dir / "two.onnx", log_settings=PredictionLogSettings(dir=tmp_path / "log")
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 2), np.int64)
    stub(handle.port).ModelInfer(
        raw_request("two", {"a": ("FP32", a), "b": ("INT64", b)}, id="r"), timeout=10
    )
    handle.stop(0)
    table = read_logs(tmp_path / "log").sort_by("row")
    assert table.schema.field("out_total").type == pa.float32()
    assert table.column("out_total").to_pylist() == [6.0, 22.0]
    assert pa.types.is_fixed_size_list(table.schema.field("out_square").type)


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_a_managed_version_with_a_varying_output_width_reads_back(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
    durability: str,
) -> None:
    model = onnx_models.identity_model("FP32", ["n", "m"])
    real_plane.deploy({1: onnx_models.save(model, tmp_path / "f.onnx").read_bytes()})
    log_dir = tmp_path / "log"
    handle = real_managed(
        log_settings=PredictionLogSettings(dir=log_dir, durability=durability, flush_interval=0.02)
    )
    assert handle.wait_ready(60)
    s = stub(handle.port)
    for i, width in enumerate([1, 2, 1, 3]):
        x = np.arange(width, dtype=np.float32).reshape(1, width) + 10 * i
        s.ModelInfer(raw_request("fraud", {"x": ("FP32", x)}, id=f"w{i}"), timeout=10)
    handle.stop(5)
    table = read_logs(log_dir)
    assert pa.types.is_list(table.schema.field("out_y").type)
    outputs = {r["request_id"]: r["out_y"] for r in table.to_pylist()}
    assert outputs == {"w0": [0.0], "w1": [10.0, 11.0], "w2": [20.0], "w3": [30.0, 31.0, 32.0]}
