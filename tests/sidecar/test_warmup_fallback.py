"""A model that warm-up cannot run on its sample input (zeros, 1 for each dim that varies) is
served unmeasured: on the CPU under ``--device auto``, unbatched unless ``--max-batch-size``
says otherwise; each request it cannot run is answered MODEL_EXECUTION_FAILED. A warm-up that
fails for want of memory still stops the sidecar (exit 1, WARMUP_FAILED)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from sidecar_helpers import (
    PYTHON,
    ROOT,
    health_status,
    output_array,
    raw_request,
    spawn_sidecar,
    stub,
)

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing.launch import prefix

#: One warm-up call per size, enough to fail or pass.
ONE_RUN = {"MODELPLANE_SIDECAR_WARMUP_RUNS": "1"}


def _save(graph: Any, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def reshape_model(path: Path) -> Path:
    """``y = Reshape(x[n, 4], shp[k])``: the zeros sample asks for shape [0], never valid."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shp"], ["y"])],
        "unk",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("shp", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return _save(graph, path)


def offset_gather_model(path: Path) -> Path:
    """``row = table[idx - 100]`` for ``idx`` INT64 [n]: batchable, but index 0 (-100) is out
    of the table's 4 rows, so the zeros sample fails; 96..103 are valid."""
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["idx", "offset"], ["shifted"]),
            helper.make_node("Gather", ["table", "shifted"], ["row"], axis=0),
        ],
        "offset_gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["n", 2])],
        initializer=[
            helper.make_tensor("table", TensorProto.FLOAT, [4, 2], [0, 1, 2, 3, 4, 5, 6, 7]),
            helper.make_tensor("offset", TensorProto.INT64, [], [100]),
        ],
    )
    return _save(graph, path)


def huge_model(path: Path) -> Path:
    """``y = zeros[n, 2**40]``: 4 TiB for one row, which no allocator grants."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["rows"], end=1),
            helper.make_node("Concat", ["rows", "wide"], ["shape"], axis=0),
            helper.make_node("ConstantOfShape", ["shape"], ["y"]),
        ],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2**40])],
        initializer=[helper.make_tensor("wide", TensorProto.INT64, [1], [2**40])],
    )
    return _save(graph, path)


def _direct(path: Path, feeds: dict[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


def test_a_model_refusing_the_sample_input_is_served_and_answers_as_onnx_runtime(
    tmp_path: Path,
) -> None:
    path = reshape_model(tmp_path / "unk.onnx")
    proc, ready = spawn_sidecar(
        ["--model", str(path), "--listen", "127.0.0.1:0", "--device", "auto"],
        env=ONE_RUN,
        stderr=tmp_path / "sidecar.log",
    )
    try:
        port = int(ready["port"])
        assert ready["provider"] == "CPUExecutionProvider"
        assert health_status(port) == "SERVING"
        s = stub(port)
        assert s.ModelReady(pb.ModelReadyRequest(name="unk"), timeout=10).ready
        rng = np.random.default_rng(3)
        for rows, shp in ((1, [2, 2]), (3, [4, 3]), (2, [-1]), (5, [2, 5, 2])):
            x = rng.standard_normal((rows, 4)).astype(np.float32)
            feeds = {"x": x, "shp": np.array(shp, dtype=np.int64)}
            request = raw_request("unk", {"x": ("FP32", x), "shp": ("INT64", feeds["shp"])})
            reply = s.ModelInfer(request, timeout=30)
            [want] = _direct(path, feeds)
            got = output_array(reply, 0, np.float32)
            assert got.shape == want.shape and np.array_equal(got, want)
        # A shape the values do not fill fails this request only, as in ONNX Runtime.
        x = np.zeros((1, 4), np.float32)
        bad = raw_request("unk", {"x": ("FP32", x), "shp": ("INT64", np.array([3], np.int64))})
        with pytest.raises(grpc.RpcError) as caught:
            s.ModelInfer(bad, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == "MODEL_EXECUTION_FAILED"
        assert health_status(port) == "SERVING"
    finally:
        proc.terminate()
        proc.wait(30)
    log = (tmp_path / "sidecar.log").read_text()
    assert "warm-up could not run the model on its sample input" in log
    assert "The input tensor cannot be reshaped" in log


def test_an_unmeasured_model_batches_only_when_told(tmp_path: Path, sidecar_factory: Any) -> None:
    path = offset_gather_model(tmp_path / "offset_gather.onnx")
    unbatched = sidecar_factory(path)
    told = sidecar_factory(path, max_batch_size=8)
    assert unbatched.slot.current.runtime.unmeasured is not None
    assert unbatched.slot.current.batcher is None
    assert told.slot.current.batcher is not None
    idx = np.array([96, 103, 98], dtype=np.int64)
    [want] = _direct(path, {"idx": idx})
    for handle in (unbatched, told):
        reply = stub(handle.port).ModelInfer(
            raw_request("offset_gather", {"idx": ("INT64", idx)}), timeout=30
        )
        assert np.array_equal(output_array(reply, 0, np.float32), want)
        assert health_status(handle.port) == "SERVING"


def test_a_warm_up_short_of_memory_still_stops_the_sidecar(tmp_path: Path) -> None:
    path = huge_model(tmp_path / "huge.onnx")
    result = subprocess.run(
        # The address-space limit is a safety net where the kernel would grant the 4 TiB
        # (vm.overcommit_memory=1).
        [*prefix(address_space_limit=32 << 30),
         PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(path),
         "--listen", "127.0.0.1:0", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **ONE_RUN},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "(WARMUP_FAILED)" in result.stderr and "Failed to allocate memory" in result.stderr
