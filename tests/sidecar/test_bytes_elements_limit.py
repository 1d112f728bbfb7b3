"""BYTES inputs have a bound of their own (``--max-bytes-elements``, 2**20 by default): each
element costs a Python string and an ONNX Runtime one whatever its length, so a request of
empty strings (four bytes each) must be refused from its shape, before anything is
allocated. A real sidecar in a subprocess, its peak memory read from /proc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from sidecar_helpers import spawn_sidecar, stub

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models
from sidecar.codec import DEFAULT_MAX_BYTES_ELEMENTS, Limits
from sidecar.settings import SidecarSettings

LIMIT = DEFAULT_MAX_BYTES_ELEMENTS


def _request(count: int, item: bytes = b"") -> Any:
    req = pb.ModelInferRequest(model_name="strings", id=f"n{count}")
    req.inputs.add(name="x", datatype="BYTES", shape=[1, count])
    prefix = len(item).to_bytes(4, "little")
    req.raw_input_contents.append((prefix + item) * count)
    return req


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model = onnx_models.save(
        onnx_models.identity_model("BYTES", ["n", "k"]),
        tmp_path_factory.mktemp("strings") / "strings.onnx",
    )
    proc, ready = spawn_sidecar(
        ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu"]
    )
    yield proc, stub(int(ready["port"]))
    proc.terminate()
    proc.wait(20)


def _refused(s: Any, req: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(req, timeout=120)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info is not None and info.reason == "TENSOR_TOO_LARGE", info
    assert info.metadata["tensor"] == "x" and info.metadata["limit"] == str(LIMIT)
    assert "'x'" in err.details() and str(LIMIT) in err.details()


def test_bytes_elements_past_the_limit_are_refused_before_decoding(server: Any) -> None:
    proc, s = server
    _refused(s, _request(LIMIT + 1))
    before = _peak_kib(proc.pid)
    # 8 Mi empty strings: 32 MiB of request, gigabytes once decoded into strings.
    _refused(s, _request(8 * LIMIT))
    grown_mib = (_peak_kib(proc.pid) - before) / 1024
    assert grown_mib < 400, f"the server's peak memory grew {grown_mib:.0f} MiB"


def test_bytes_elements_at_the_limit_are_answered(server: Any) -> None:
    _, s = server
    answer = s.ModelInfer(_request(LIMIT, b"ab"), timeout=120)
    assert list(answer.outputs[0].shape) == [1, LIMIT]
    raw = answer.raw_output_contents[0]
    assert raw == (b"\x02\x00\x00\x00ab") * LIMIT


def test_the_limit_is_a_setting_with_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tmp_path / "m.onnx"
    assert Limits.of(SidecarSettings(model=model)).max_bytes_elements == LIMIT
    monkeypatch.setenv("MODELPLANE_SIDECAR_MAX_BYTES_ELEMENTS", "64")
    limits = Limits.of(SidecarSettings(model=model))
    assert limits.max_bytes_elements == 64


def test_the_flag_sets_the_served_limit(tmp_path: Path) -> None:
    model = onnx_models.save(
        onnx_models.identity_model("BYTES", ["n", "k"]), tmp_path / "strings.onnx"
    )
    argv = ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu"]
    proc, ready = spawn_sidecar([*argv, "--max-bytes-elements", "100"])
    try:
        s = stub(int(ready["port"]))
        assert s.ModelInfer(_request(100, b"z"), timeout=60).raw_output_contents[0] == (
            b"\x01\x00\x00\x00z" * 100
        )
        with pytest.raises(grpc.RpcError) as caught:
            s.ModelInfer(_request(101), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == "TENSOR_TOO_LARGE"
        assert info.metadata["limit"] == "100"
    finally:
        proc.terminate()
        proc.wait(20)


def _two_strings() -> Any:
    """``a`` and ``b``, BYTES [n, k] each, answered as they came."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["ya"]), helper.make_node("Identity", ["b"], ["yb"])],
        "two_strings",
        [
            helper.make_tensor_value_info("a", TensorProto.STRING, ["n", "k"]),
            helper.make_tensor_value_info("b", TensorProto.STRING, ["n", "k"]),
        ],
        [
            helper.make_tensor_value_info("ya", TensorProto.STRING, ["n", "k"]),
            helper.make_tensor_value_info("yb", TensorProto.STRING, ["n", "k"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _strings(name: str, items: list[bytes]) -> tuple[Any, bytes]:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES")
    tensor.shape.extend([1, len(items)])
    return tensor, b"".join(len(x).to_bytes(4, "little") + x for x in items)


def test_the_limit_holds_over_all_inputs_before_any_is_decoded_and_in_the_log(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    from sidecar.predlog import PredictionLogSettings, read_logs

    model = onnx_models.save(_two_strings(), tmp_path / "two_strings.onnx")
    log = PredictionLogSettings(dir=tmp_path / "log", durability="sync")
    handle = sidecar_factory(
        model, model_name="two_strings", log_settings=log, max_bytes_elements=100
    )
    s = stub(handle.port)

    def send(rid: str, a: list[bytes], b: list[bytes]) -> grpc.RpcError:
        req = pb.ModelInferRequest(model_name="two_strings", id=rid)
        for name, items in (("a", a), ("b", b)):
            tensor, raw = _strings(name, items)
            req.inputs.append(tensor)
            req.raw_input_contents.append(raw)
        with pytest.raises(grpc.RpcError) as caught:
            s.ModelInfer(req, timeout=30)
        return caught.value

    # Each input within the limit, both together past it: refused from the shapes, before
    # 'a' (which is not even UTF-8) is decoded.
    err = send("over", [b"\xff"] * 60, [b"x"] * 60)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert info is not None and info.reason == "TENSOR_TOO_LARGE" and info.metadata["tensor"] == "b"
    # The refused request's record decodes its inputs within the same limit over all of them.
    err = send("logged", [b"a"] * 70, [b"b"] * 70)
    assert error_info(err).reason == "TENSOR_TOO_LARGE"  # type: ignore[union-attr]
    handle.stop(5)
    records = {r["request_id"]: r for r in read_logs(tmp_path / "log").to_pylist()}
    logged = records["logged"]
    strings = [k for k, v in logged.items() if k[:2] in ("a_", "b_") and v is not None]
    assert 0 < len(strings) <= 100, len(strings)
