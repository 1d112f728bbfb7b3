"""Fixtures for the sidecar tests: real ONNX models built from code, real servers on free
ports (in process, or as a subprocess through the CLI), and OIP request builders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, helper

from modelplane.testing import onnx_models


def two_output_model() -> Any:
    """``a`` FP32 [n,4], ``b`` INT64 [n,2] -> ``total`` = row sums of a, ``square`` = b*b."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["a", "axes"], ["total"], keepdims=1),
            helper.make_node("Mul", ["b", "b"], ["square"]),
        ],
        "two_outputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["n", 2]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("square", TensorProto.INT64, ["n", 2]),
        ],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def gather_model() -> Any:
    """``idx`` INT64 [n] -> ``row`` = table[idx]: fails in ONNX Runtime on an index >= 4."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["row"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["n", 2])],
        initializer=[
            helper.make_tensor("table", TensorProto.FLOAT, [4, 2], [0, 1, 2, 3, 4, 5, 6, 7])
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of test models: the 32-feature MLP and identity models per datatype."""
    d = tmp_path_factory.mktemp("models")
    onnx_models.save(onnx_models.mlp(), d / "mlp.onnx")
    for dt in ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"):
        onnx_models.save(onnx_models.identity_model(dt, ["n", 3]), d / f"id_{dt.lower()}.onnx")
    for dt in ("FP16", "FP32", "FP64", "BYTES"):
        onnx_models.save(onnx_models.identity_model(dt, ["n", 3]), d / f"id_{dt.lower()}.onnx")
    onnx_models.save(onnx_models.identity_model("FP32", [2, 3]), d / "fixed.onnx")
    onnx_models.save(two_output_model(), d / "two.onnx")
    onnx_models.save(gather_model(), d / "gather.onnx")
    return d


@pytest.fixture
def sidecar_factory() -> Iterator[Callable[..., Any]]:
    """Start in-process sidecars: ``factory(model_path, observers=, log_settings=,
    **settings)``; all stop at teardown."""
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    handles: list[Any] = []

    def factory(
        model: Path,
        observers: list[Any] | None = None,
        log_settings: Any = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("listen", "127.0.0.1:0")
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("warmup_runs", 1)
        handle = start(
            SidecarSettings(model=model, **kwargs), observers=observers, log_settings=log_settings
        )
        handles.append(handle)
        return handle

    yield factory
    for h in handles:
        h.stop(0)


@pytest.fixture
def plane() -> Iterator[Any]:
    """A control-plane double (DeploymentService + BlobService) on a free port."""
    from control_plane_double import FakeControlPlane

    p = FakeControlPlane()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """Versions 1-3 of an 8-feature classifier that answer differently (seeds 1-3)."""
    d = tmp_path_factory.mktemp("managed-models")
    out = {}
    for number in (1, 2, 3):
        path = onnx_models.save(onnx_models.mlp(8, (16,), 2, seed=number), d / f"v{number}.onnx")
        out[number] = path.read_bytes()
    return out


@pytest.fixture
def managed(plane: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process managed sidecars of deployment ``fraud`` on the control-plane double:
    ``managed(log_settings=None, **settings)``; all stop at teardown."""
    from sidecar_helpers import managed_sidecars

    with managed_sidecars(plane.address, tmp_path) as factory:
        yield factory
