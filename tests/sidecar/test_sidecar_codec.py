"""The request decoder's common-case shortcut gives exactly what the full decoder gives.

Requests are built with the OIP stubs and decoded against the signature of a real ONNX
session; every variation the shortcut must not take is checked to produce the full path's
result or error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sidecar_helpers import raw_request

from modelplane.errors import InvalidArgument
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models
from sidecar import codec
from sidecar.signature import Signature, signature_of

LIMITS = codec.Limits(max_request_rows=8, max_tensor_elements=1024)


@pytest.fixture(scope="module")
def signature(tmp_path_factory: pytest.TempPathFactory) -> Signature:
    path = onnx_models.save(onnx_models.mlp(), tmp_path_factory.mktemp("codec") / "mlp.onnx")
    return signature_of(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def _full(request: Any, signature: Signature, limits: codec.Limits) -> Any:
    """The full decoder, with the shortcut out of the way."""
    shortcut = codec._decode_common
    codec._decode_common = lambda *_: None  # type: ignore[assignment]
    try:
        return codec.decode(request, signature, limits)
    finally:
        codec._decode_common = shortcut


def _outcome(fn: Any) -> Any:
    try:
        d = fn()
    except InvalidArgument as err:
        return ("error", err.reason, err.message)
    arrays = {n: (a.dtype.str, a.shape, a.tobytes()) for n, a in d.arrays.items()}
    return ("ok", arrays, d.outputs, d.rows, d.key, d.request_id)


def _features(signature: Signature) -> tuple[str, int]:
    spec = signature.inputs[0]
    return spec.name, spec.tail_size


def _variations(signature: Signature) -> list[Any]:
    name, width = _features(signature)
    x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
    base = raw_request("mlp", {name: ("FP32", x)}, id="req-1")
    out: list[Any] = [base, raw_request("mlp", {name: ("FP32", x[:1])})]
    wrong_size = pb.ModelInferRequest()
    wrong_size.CopyFrom(base)
    wrong_size.raw_input_contents[0] = wrong_size.raw_input_contents[0][:-4]
    out.append(wrong_size)
    out.append(raw_request("mlp", {name: ("FP64", x.astype(np.float64))}))
    out.append(raw_request("mlp", {"other": ("FP32", x)}))
    out.append(raw_request("mlp", {name: ("FP32", np.zeros((9, width), np.float32))}))
    out.append(raw_request("mlp", {name: ("FP32", np.zeros((0, width), np.float32))}))
    out.append(raw_request("mlp", {name: ("FP32", np.zeros((2, width + 1), np.float32))}))
    out.append(raw_request("mlp", {name: ("FP32", x.reshape(-1))}))
    with_params = pb.ModelInferRequest()
    with_params.CopyFrom(base)
    with_params.parameters["priority"].string_param = "high"
    out.append(with_params)
    tensor_params = pb.ModelInferRequest()
    tensor_params.CopyFrom(base)
    tensor_params.inputs[0].parameters["x"].bool_param = True
    out.append(tensor_params)
    typed_too = pb.ModelInferRequest()
    typed_too.CopyFrom(base)
    typed_too.inputs[0].contents.fp32_contents.extend([1.0])
    out.append(typed_too)
    some_outputs = pb.ModelInferRequest()
    some_outputs.CopyFrom(base)
    some_outputs.outputs.add(name=signature.output_names[0])
    out.append(some_outputs)
    unknown_output = pb.ModelInferRequest()
    unknown_output.CopyFrom(base)
    unknown_output.outputs.add(name="nope")
    out.append(unknown_output)
    nan = x.copy()
    nan[0, 0] = np.nan
    out.append(raw_request("mlp", {name: ("FP32", nan)}))
    return out


@pytest.mark.parametrize("reject_non_finite", [False, True])
def test_shortcut_matches_the_full_decoder(signature: Signature, reject_non_finite: bool) -> None:
    limits = codec.Limits(
        LIMITS.max_request_rows, LIMITS.max_tensor_elements, reject_non_finite=reject_non_finite
    )
    for request in _variations(signature):
        got = _outcome(lambda r=request: codec.decode(r, signature, limits))
        want = _outcome(lambda r=request: _full(r, signature, limits))
        assert got == want, request


def test_common_request_takes_the_shortcut(signature: Signature) -> None:
    name, width = _features(signature)
    x = np.ones((3, width), np.float32)
    request = raw_request("mlp", {name: ("FP32", x)}, id="abc")
    decoded = codec._decode_common(
        request, request.inputs, request.raw_input_contents, signature, LIMITS
    )
    assert decoded is not None
    assert decoded.rows == 3 and decoded.request_id == "abc"
    assert decoded.outputs == signature.output_names
    np.testing.assert_array_equal(decoded.arrays[name], x)


def _signature_of(model: Any, path: Any) -> Signature:
    saved = onnx_models.save(model, path)
    return signature_of(ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]))


def test_typed_uint64_contents_keep_every_digit(tmp_path: Any) -> None:
    # Values on both sides of 2**63 in one list: a float64 detour would round them.
    signature = _signature_of(onnx_models.identity_model("UINT64", ["n", 3]), tmp_path / "u.onnx")
    sent = [1, 2**63 + 1, 2**64 - 1]
    request = pb.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="x", datatype="UINT64", shape=[1, 3])
    tensor.contents.uint64_contents.extend(sent)
    got = codec.decode(request, signature, LIMITS).arrays["x"]
    assert got.dtype == np.uint64
    assert got.ravel().tolist() == sent


@pytest.mark.parametrize(
    ("datatype", "beyond"), [("INT8", 128), ("INT16", -(2**15) - 1), ("UINT8", 256)]
)
def test_typed_contents_outside_a_narrow_type_are_refused(
    tmp_path: Any, datatype: str, beyond: int
) -> None:
    signature = _signature_of(onnx_models.identity_model(datatype, ["n", 3]), tmp_path / "i.onnx")
    request = pb.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, codec._TYPED_FIELD[datatype]).extend([0, 1, beyond])
    with pytest.raises(InvalidArgument) as err:
        codec.decode(request, signature, LIMITS)
    assert err.value.reason == "VALUE_OUT_OF_RANGE" and "'x'" in err.value.message


@pytest.mark.parametrize("shape", [[1, 0, 2**40], [1, 0, 2**62], [1, 2**62, 0], [0, 2**33, 2**33]])
def test_a_zero_dimension_does_not_hide_the_others_from_the_limit(
    tmp_path: Any, shape: list[int]
) -> None:
    signature = _signature_of(
        onnx_models.identity_model("FP32", ["n", "m", "k"]), tmp_path / "d.onnx"
    )
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument) as err:
        codec.decode(request, signature, LIMITS)
    assert err.value.reason == "TENSOR_TOO_LARGE" and "'x'" in err.value.message
