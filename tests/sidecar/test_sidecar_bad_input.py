"""The bad-input table: each malformed request gets the right status, an ErrorInfo reason
and a message naming the tensor, and the server keeps answering valid requests."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import output_array, raw_request, stub

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb
from sidecar.predlog import PredictionLogSettings, read_logs

INVALID = grpc.StatusCode.INVALID_ARGUMENT
A = np.ones((2, 4), np.float32)
B = np.ones((2, 2), np.int64)


def good() -> Any:
    return raw_request("two", {"a": ("FP32", A), "b": ("INT64", B)})


def mutate(fn: Callable[[Any], None]) -> Callable[[], Any]:
    def build() -> Any:
        req = good()
        fn(req)
        return req

    return build


def _set(req: Any, **kw: Any) -> None:
    for k, v in kw.items():
        setattr(req, k, v)


def _shape(i: int, shape: list[int]) -> Callable[[Any], None]:
    def fn(req: Any) -> None:
        del req.inputs[i].shape[:]
        req.inputs[i].shape.extend(shape)

    return fn


def _typed(req: Any) -> Any:
    req = pb.ModelInferRequest(model_name="two")
    a = req.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    a.contents.fp32_contents.extend([1, 2, 3, 4])
    b = req.inputs.add(name="b", datatype="INT64", shape=[1, 2])
    b.contents.int64_contents.extend([5, 6])
    return req


def typed(fn: Callable[[Any], None] | None = None) -> Callable[[], Any]:
    def build() -> Any:
        req = _typed(None)
        if fn:
            fn(req)
        return req

    return build


CASES: list[tuple[str, Callable[[], Any], grpc.StatusCode, str, str]] = [
    (
        "unknown model",
        mutate(lambda r: _set(r, model_name="nope")),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        "nope",
    ),
    (
        "unknown version",
        mutate(lambda r: _set(r, model_version="3")),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_VERSION_NOT_FOUND",
        "'3'",
    ),
    (
        "unknown input",
        mutate(lambda r: _set(r.inputs[0], name="z")),
        INVALID,
        "UNKNOWN_INPUT",
        "'z'",
    ),
    (
        "missing input",
        lambda: raw_request("two", {"a": ("FP32", A)}),
        INVALID,
        "MISSING_INPUT",
        "b",
    ),
    (
        "duplicate input",
        mutate(lambda r: _set(r.inputs[1], name="a", datatype="FP32")),
        INVALID,
        "DUPLICATE_INPUT",
        "'a'",
    ),
    (
        "wrong datatype",
        mutate(lambda r: _set(r.inputs[1], datatype="INT32")),
        INVALID,
        "WRONG_DATATYPE",
        "'b'",
    ),
    (
        "unknown datatype",
        mutate(lambda r: _set(r.inputs[0], datatype="FLOAT")),
        INVALID,
        "WRONG_DATATYPE",
        "'a'",
    ),
    ("wrong rank", mutate(_shape(0, [8])), INVALID, "WRONG_SHAPE", "'a'"),
    ("wrong fixed dim", mutate(_shape(0, [4, 2])), INVALID, "WRONG_SHAPE", "'a'"),
    ("negative dim", mutate(_shape(0, [-2, 4])), INVALID, "INVALID_SHAPE", "'a'"),
    ("huge element count", mutate(_shape(0, [2**62, 4])), INVALID, "TENSOR_TOO_LARGE", "'a'"),
    ("overflowing dims", mutate(_shape(1, [2**40, 2])), INVALID, "TENSOR_TOO_LARGE", "'b'"),
    (
        "raw too short",
        mutate(lambda r: _set_raw(r, 0, r.raw_input_contents[0][:-1])),
        INVALID,
        "RAW_SIZE_MISMATCH",
        "'a'",
    ),
    (
        "raw too long",
        mutate(lambda r: _set_raw(r, 1, r.raw_input_contents[1] + b"\0")),
        INVALID,
        "RAW_SIZE_MISMATCH",
        "'b'",
    ),
    (
        "more raw entries",
        mutate(lambda r: r.raw_input_contents.append(b"x")),
        INVALID,
        "RAW_CONTENTS_COUNT",
        "raw_input_contents",
    ),
    (
        "fewer raw entries",
        mutate(lambda r: r.raw_input_contents.pop()),
        INVALID,
        "RAW_CONTENTS_COUNT",
        "raw_input_contents",
    ),
    (
        "raw and typed",
        mutate(lambda r: r.inputs[0].contents.fp32_contents.append(1)),
        INVALID,
        "BOTH_RAW_AND_TYPED",
        "'a'",
    ),
    (
        "empty batch",
        lambda: raw_request("two", {"a": ("FP32", A[:0]), "b": ("INT64", B[:0])}),
        INVALID,
        "EMPTY_BATCH",
        "'a'",
    ),
    (
        "too many rows",
        lambda: raw_request(
            "two",
            {
                "a": ("FP32", np.ones((300, 4), np.float32)),
                "b": ("INT64", np.ones((300, 2), np.int64)),
            },
        ),
        INVALID,
        "BATCH_TOO_LARGE",
        "'a'",
    ),
    (
        "unknown output",
        mutate(lambda r: r.outputs.add(name="nope")),
        INVALID,
        "UNKNOWN_OUTPUT",
        "'nope'",
    ),
    (
        "duplicate output",
        mutate(lambda r: (r.outputs.add(name="total"), r.outputs.add(name="total"))),
        INVALID,
        "DUPLICATE_OUTPUT",
        "'total'",
    ),
    (
        "parameter without value",
        mutate(lambda r: r.parameters["x"].Clear()),
        INVALID,
        "INVALID_PARAMETER",
        "'x'",
    ),
    (
        "parameter of wrong type",
        mutate(lambda r: _set(r.parameters["priority"], string_param="high")),
        INVALID,
        "INVALID_PARAMETER",
        "'priority'",
    ),
    (
        "negative timeout",
        mutate(lambda r: _set(r.parameters["timeout"], int64_param=-5)),
        INVALID,
        "INVALID_PARAMETER",
        "'timeout'",
    ),
    (
        "shared-memory output",
        mutate(
            lambda r: _set(
                r.outputs.add(name="total").parameters["shared_memory_region"], string_param="r"
            )
        ),
        INVALID,
        "UNSUPPORTED_PARAMETER",
        "'shared_memory_region'",
    ),
    (
        "shared-memory input",
        mutate(lambda r: _set(r.inputs[0].parameters["shared_memory_byte_size"], uint64_param=64)),
        INVALID,
        "UNSUPPORTED_PARAMETER",
        "'shared_memory_byte_size'",
    ),
    (
        "typed count mismatch",
        typed(lambda r: r.inputs[0].contents.fp32_contents.append(5)),
        INVALID,
        "CONTENTS_SIZE_MISMATCH",
        "'a'",
    ),
    (
        "typed wrong field",
        typed(lambda r: r.inputs[1].contents.int_contents.append(5)),
        INVALID,
        "WRONG_CONTENTS_FIELD",
        "'b'",
    ),
]


def _set_raw(req: Any, i: int, data: bytes) -> None:
    req.raw_input_contents[i] = data


@pytest.fixture(scope="module")
def servers(model_dir: Path) -> Any:
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    def go(name: str, **kw: Any) -> Any:
        return start(
            SidecarSettings(
                model=model_dir / name, listen="127.0.0.1:0", device="cpu", warmup_runs=1, **kw
            )
        )

    handles = {
        "two": go("two.onnx", max_request_rows=256),
        "mlp": go("mlp.onnx", reject_non_finite=True),
        "bytes": go("id_bytes.onnx"),
        "gather": go("gather.onnx", max_batch_size=16, max_queue_delay=0.005),
        "fixed": go("fixed.onnx"),
        "int8": go("id_int8.onnx"),
        "fp16": go("id_fp16.onnx"),
    }
    yield {k: (h, stub(h.port)) for k, h in handles.items()}
    for h in handles.values():
        h.stop(0)


def _expect(s: Any, req: Any, code: grpc.StatusCode, reason: str, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(req, timeout=10)
    err = caught.value
    assert err.code() == code, err.details()
    info = error_info(err)
    assert info is not None and info.reason == reason, (info, err.details())
    assert needle in err.details(), err.details()


@pytest.mark.parametrize(
    ("label", "build", "code", "reason", "needle"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_table(
    servers: Any, label: str, build: Any, code: Any, reason: str, needle: str
) -> None:
    _, s = servers["two"]
    _expect(s, build(), code, reason, needle)
    resp = s.ModelInfer(good(), timeout=10)
    assert np.array_equal(output_array(resp, 1, np.int64), B * B)


def test_typed_contents_are_accepted(servers: Any) -> None:
    _, s = servers["two"]
    resp = s.ModelInfer(_typed(None), timeout=10)
    assert output_array(resp, 0, np.float32).tolist() == [[10.0]]
    assert output_array(resp, 1, np.int64).tolist() == [[25, 36]]


def test_non_finite_rejected_when_asked(servers: Any) -> None:
    _, s = servers["mlp"]
    x = np.zeros((2, 32), np.float32)
    x[1, 3] = np.nan
    _expect(s, raw_request("mlp", {"input": ("FP32", x)}), INVALID, "NON_FINITE_VALUE", "'input'")
    x[1, 3] = np.inf
    _expect(s, raw_request("mlp", {"input": ("FP32", x)}), INVALID, "NON_FINITE_VALUE", "'input'")


def test_bytes_prefix_overrun_and_bad_utf8(servers: Any) -> None:
    _, s = servers["bytes"]
    req = pb.ModelInferRequest(model_name="id_bytes")
    req.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    req.raw_input_contents.append(b"\x01\0\0\0a\x01\0\0\0b\xff\0\0\0c")
    _expect(s, req, INVALID, "BYTES_PREFIX_OVERRUN", "'x'")
    req.raw_input_contents[0] = b"\x01\0\0\0a\x01\0\0\0b\x01\0"
    _expect(s, req, INVALID, "BYTES_PREFIX_OVERRUN", "'x'")
    req.raw_input_contents[0] = b"\x01\0\0\0a\x01\0\0\0b\x01\0\0\0\xff"
    _expect(s, req, INVALID, "INVALID_UTF8", "'x'")
    req.raw_input_contents[0] = b"\x01\0\0\0a\x01\0\0\0b\x01\0\0\0cEXTRA"
    _expect(s, req, INVALID, "RAW_SIZE_MISMATCH", "'x'")


def test_typed_range_and_fp16(servers: Any) -> None:
    _, s = servers["int8"]
    req = pb.ModelInferRequest(model_name="id_int8")
    req.inputs.add(name="x", datatype="INT8", shape=[1, 3]).contents.int_contents.extend(
        [1, 2, 300]
    )
    _expect(s, req, INVALID, "VALUE_OUT_OF_RANGE", "'x'")
    _, s16 = servers["fp16"]
    req = pb.ModelInferRequest(model_name="id_fp16")
    req.inputs.add(name="x", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    _expect(s16, req, INVALID, "TYPED_CONTENTS_UNSUPPORTED", "'x'")


def test_fixed_first_dim_model_is_served_unbatched(servers: Any) -> None:
    handle, s = servers["fixed"]
    assert handle.slot.current.batcher is None
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    resp = s.ModelInfer(raw_request("fixed", {"x": ("FP32", x)}))
    assert np.array_equal(output_array(resp, 0, np.float32), x)
    _expect(s, raw_request("fixed", {"x": ("FP32", x[:1])}), INVALID, "WRONG_SHAPE", "'x'")


def test_ort_failure_hits_only_the_culprit(servers: Any) -> None:
    """An index past the table makes ONNX Runtime fail: that request alone gets
    INVALID_ARGUMENT MODEL_EXECUTION_FAILED, its batch neighbours their answers."""
    from concurrent.futures import ThreadPoolExecutor

    _, s = servers["gather"]

    def call(i: int) -> str:
        idx = np.array([i % 4, 9 if i % 5 == 0 else 1], np.int64)
        try:
            resp = s.ModelInfer(raw_request("gather", {"idx": ("INT64", idx)}), timeout=10)
        except grpc.RpcError as exc:
            info = error_info(exc)
            return f"{exc.code().name}:{info.reason if info else ''}:{i % 5 == 0}"
        got = output_array(resp, 0, np.float32)
        want = np.arange(8, dtype=np.float32).reshape(4, 2)[idx]
        return f"OK:{np.array_equal(got, want)}:{i % 5 == 0}"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(60)))
    assert set(results) == {"OK:True:False", "INVALID_ARGUMENT:MODEL_EXECUTION_FAILED:True"}


def test_undecodable_bytes_are_invalid_argument(servers: Any) -> None:
    handle, _ = servers["two"]
    channel = grpc.insecure_channel(handle.address)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
    assert caught.value.code() == INVALID
    info = error_info(caught.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"


def test_undecodable_requests_are_counted_and_logged(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    """A ModelInfer call whose bytes are no request counts in the request metrics and is in
    the prediction log like any other refusal."""
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        metrics_listen="127.0.0.1:0",
        log_settings=PredictionLogSettings(dir=tmp_path, flush_interval=0.05),
    )
    call = grpc.insecure_channel(handle.address).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )
    for i in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff", timeout=10, metadata=(("x-request-id", f"bad-{i}"),))
        assert caught.value.code() == INVALID
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=10
    ).read()
    counted = {
        s.labels["code"]: s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "modelplane_inference_requests_total"
    }
    assert counted.get("INVALID_ARGUMENT") == 3
    handle.stop(5)
    rows = read_logs(tmp_path).to_pylist()
    assert [r["status_reason"] for r in rows] == ["MALFORMED_REQUEST"] * 3
    assert all(r["status_code"] == "INVALID_ARGUMENT" for r in rows)
    assert sorted(r["request_id"] for r in rows) == ["bad-0", "bad-1", "bad-2"]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        # A label whose request_id is not UTF-8 (bytes 0xff 0xfe), class_label 1.
        ("IngestLabels", b"\x0a\x06\x0a\x02\xff\xfe\x18\x01"),
        ("GetDriftReport", b"\xff\xff\xff"),
    ],
    ids=["IngestLabels", "GetDriftReport"],
)
def test_undecodable_admin_requests_are_invalid_argument(
    servers: Any, method: str, body: bytes
) -> None:
    handle, _ = servers["two"]
    channel = grpc.insecure_channel(handle.address)
    call = channel.unary_unary(f"/modelplane.v1.SidecarAdminService/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        call(body, timeout=10)
    assert caught.value.code() == INVALID, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"
    assert f"modelplane.v1.{method}Request" in caught.value.details()
    # A request that parses still reaches the servicer (no baseline here: no drift).
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/modelplane.v1.SidecarAdminService/GetDriftReport")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_other_rpcs_are_unimplemented(servers: Any) -> None:
    handle, _ = servers["two"]
    channel = grpc.insecure_channel(handle.address)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metadata_and_readiness(servers: Any) -> None:
    _, s = servers["two"]
    meta = s.ModelMetadata(pb.ModelMetadataRequest(name="two"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("a", "FP32", [-1, 4]),
        ("b", "INT64", [-1, 2]),
    ]
    assert list(meta.versions) == ["1"]
    assert s.ModelReady(pb.ModelReadyRequest(name="two", version="1")).ready
    assert s.ServerLive(pb.ServerLiveRequest()).live
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    assert s.ServerMetadata(pb.ServerMetadataRequest()).name == "modelplane-sidecar"
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelMetadata(pb.ModelMetadataRequest(name="two", version="2"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
