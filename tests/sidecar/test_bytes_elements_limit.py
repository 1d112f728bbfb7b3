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
