"""Every refusal of one tensor names it in its ``google.rpc.ErrorInfo`` metadata (``tensor``),
as well as in its message: negative dims, unknown and repeated outputs, parameters of an
input or an output, an unknown or the one missing input. A real sidecar on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sidecar_helpers import raw_request, stub

from modelplane.errors import error_info

A = np.ones((2, 4), np.float32)
B = np.ones((2, 2), np.int64)


def _good() -> Any:
    return raw_request("two", {"a": ("FP32", A), "b": ("INT64", B)})


def _shape(i: int, shape: list[int]) -> Callable[[Any], None]:
    def fn(req: Any) -> None:
        del req.inputs[i].shape[:]
        req.inputs[i].shape.extend(shape)

    return fn


def _param(kind: str, name: str, key: str, **value: Any) -> Callable[[Any], None]:
    def fn(req: Any) -> None:
        if kind == "input":
            params = next(t for t in req.inputs if t.name == name).parameters
        else:
            params = req.outputs.add(name=name).parameters
        if value:
            for field, v in value.items():
                setattr(params[key], field, v)
        else:
            params[key].Clear()

    return fn


def _outputs(*names: str) -> Callable[[Any], None]:
    def fn(req: Any) -> None:
        for n in names:
            req.outputs.add(name=n)

    return fn


def _rename(i: int, name: str) -> Callable[[Any], None]:
    def fn(req: Any) -> None:
        req.inputs[i].name = name

    return fn


def _drop_b(req: Any) -> None:
    del req.inputs[1]
    del req.raw_input_contents[1]


CASES: list[tuple[str, Callable[[Any], None], str, str]] = [
    ("negative first dim", _shape(0, [-1, 4]), "INVALID_SHAPE", "a"),
    ("negative later dim", _shape(1, [1, -4]), "INVALID_SHAPE", "b"),
    ("unknown output", _outputs("nope"), "UNKNOWN_OUTPUT", "nope"),
    ("duplicate output", _outputs("total", "total"), "DUPLICATE_OUTPUT", "total"),
    ("input parameter without value", _param("input", "a", "x"), "INVALID_PARAMETER", "a"),
    (
        "input parameter of wrong type",
        _param("input", "b", "priority", string_param="high"),
        "INVALID_PARAMETER",
        "b",
    ),
    (
        "input parameter below zero",
        _param("input", "a", "timeout", int64_param=-1),
        "INVALID_PARAMETER",
        "a",
    ),
    (
        "input shared memory",
        _param("input", "a", "shared_memory_region", string_param="r"),
        "UNSUPPORTED_PARAMETER",
        "a",
    ),
    (
        "output parameter without value",
        _param("output", "total", "x"),
        "INVALID_PARAMETER",
        "total",
    ),
    (
        "output parameter of wrong type",
        _param("output", "square", "binary_data_output", int64_param=1),
        "INVALID_PARAMETER",
        "square",
    ),
    (
        "output shared memory",
        _param("output", "square", "shared_memory_region", string_param="r"),
        "UNSUPPORTED_PARAMETER",
        "square",
    ),
    ("unknown input", _rename(0, "z"), "UNKNOWN_INPUT", "z"),
    ("one missing input", _drop_b, "MISSING_INPUT", "b"),
]


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Any:
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    handle = start(
        SidecarSettings(
            model=model_dir / "two.onnx", listen="127.0.0.1:0", device="cpu", warmup_runs=1
        )
    )
    yield stub(handle.port)
    handle.stop(0)


@pytest.mark.parametrize(("label", "change", "reason", "tensor"), CASES, ids=[c[0] for c in CASES])
def test_a_refused_tensor_is_named_in_error_info(
    server: Any, label: str, change: Callable[[Any], None], reason: str, tensor: str
) -> None:
    req = _good()
    change(req)
    with pytest.raises(grpc.RpcError) as caught:
        server.ModelInfer(req, timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info is not None and info.reason == reason, (info, err.details())
    assert info.metadata.get("tensor") == tensor, (dict(info.metadata), err.details())
    assert tensor in err.details()
