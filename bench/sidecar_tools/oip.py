"""Open Inference Protocol messages for the benchmark: build requests, read responses."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from modelplane.oip import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
INFER_METHOD = f"/{SERVICE}/ModelInfer"

_NUMPY_TO_OIP = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}
_OIP_TO_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_CONTENTS_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}


def infer_request(model: str, input_name: str, array: np.ndarray, request_id: str = "") -> bytes:
    """A serialized ``ModelInferRequest`` carrying ``array`` as raw row-major bytes."""
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    tensor = req.inputs.add()
    tensor.name = input_name
    tensor.datatype = _NUMPY_TO_OIP[array.dtype]
    tensor.shape.extend(array.shape)
    req.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return req.SerializeToString()


def infer_response_like(model: str, output_name: str, array: np.ndarray) -> bytes:
    """A serialized ``ModelInferResponse`` of the size a server would answer for ``array``."""
    resp = pb.ModelInferResponse(model_name=model, model_version="1")
    tensor = resp.outputs.add()
    tensor.name = output_name
    tensor.datatype = _NUMPY_TO_OIP[array.dtype]
    tensor.shape.extend(array.shape)
    resp.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return resp.SerializeToString()


def decode_outputs(data: bytes) -> dict[str, np.ndarray]:
    """The outputs of a serialized ``ModelInferResponse``, raw or typed contents."""
    resp = pb.ModelInferResponse.FromString(data)
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(resp.outputs):
        dtype = _OIP_TO_NUMPY[tensor.datatype]
        if resp.raw_output_contents:
            flat = np.frombuffer(resp.raw_output_contents[i], dtype=dtype)
        else:
            flat = np.asarray(getattr(tensor.contents, _CONTENTS_FIELD[tensor.datatype]), dtype)
        out[tensor.name] = flat.reshape(tuple(tensor.shape))
    return out


def _unary(channel: grpc.Channel, method: str, request: Any, response_type: Any) -> Any:
    call = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return call(request, timeout=2.0)


def wait_ready(
    target: str, model: str, timeout: float, alive: Any = None, request: bytes | None = None
) -> None:
    """Wait until ``target`` reports ``model`` ready (``ModelReady``).

    With ``request``, wait instead until a ``ModelInfer`` call with it succeeds (for servers
    that only answer inference). ``alive`` is called between attempts and should raise when
    the server process died.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        infer = channel.unary_unary(INFER_METHOD)
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                if request is not None:
                    infer(request, timeout=5.0)
                    return
                ready = _unary(
                    channel, "ModelReady", pb.ModelReadyRequest(name=model), pb.ModelReadyResponse
                )
                if ready.ready:
                    return
            except grpc.RpcError as err:
                last = err
            time.sleep(0.2)
    raise TimeoutError(f"{target} did not report model {model!r} ready in {timeout:.0f}s: {last}")


def infer_once(target: str, request: bytes) -> dict[str, np.ndarray]:
    """Send one serialized request and return the decoded outputs."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER_METHOD)
        return decode_outputs(call(request, timeout=30.0))
