"""The methods of ``inference.GRPCInferenceService`` the sidecar does not offer (Triton's
ModelStreamInfer, ModelConfig, the repository, shared memory, trace and log settings) answer
UNIMPLEMENTED with the reason ``METHOD_NOT_OFFERED`` and what to use instead, rather than
gRPC's bare "Method not found!"; other services' unknown methods are left to gRPC."""

from __future__ import annotations

import json
import subprocess
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sidecar_helpers import PYTHON, raw_request, stub

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb
from sidecar.model import ModelSlot
from sidecar.servicer import InferenceServicer, add_to_server

# tritonclient registers the inference.* messages under its own file name, so it runs in a
# process of its own (see triton_client.py).
STREAM_SCRIPT = """
import json, sys, threading
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient(sys.argv[1])
done = threading.Event()
errors = []

def callback(result, error):
    errors.append(None if error is None else [error.status(), error.message()])
    done.set()

client.start_stream(callback=callback)
x = tc.InferInput("x", [1, 3], "FP32")
x.set_data_from_numpy(np.zeros((1, 3), np.float32))
try:
    client.async_stream_infer("id_fp32", [x])
except tc.InferenceServerException:
    # The server may refuse the stream before the request is queued: tritonclient then
    # reports the refusal through the callback and refuses the enqueue.
    pass
done.wait(30)
client.stop_stream()
try:
    client.get_model_config("id_fp32")
    config = None
except tc.InferenceServerException as exc:
    config = [exc.status(), exc.message()]
client.close()
print(json.dumps({"stream": errors, "config": config}))
"""


def test_tritonclient_streaming_is_refused_with_what_to_use_instead(
    model_dir: Path, sidecar_factory: Any
) -> None:
    handle = sidecar_factory(model_dir / "id_fp32.onnx")
    result = subprocess.run(
        [PYTHON, "-c", STREAM_SCRIPT, handle.address], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    [(status, message)] = answers["stream"]
    assert status == "StatusCode.UNIMPLEMENTED"
    assert message.startswith("ModelStreamInfer is not offered by the modelplane sidecar")
    assert "send each request as a ModelInfer call" in message
    status, message = answers["config"]
    assert status == "StatusCode.UNIMPLEMENTED"
    assert "ModelConfig is not offered" in message and "use ModelMetadata" in message
    # The offered methods are served as before.
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    reply = stub(handle.port).ModelInfer(raw_request("id_fp32", {"x": ("FP32", x)}), timeout=30)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == x.ravel().tolist()


def _refusal(channel: grpc.Channel, method: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method)(b"", timeout=10)
    return caught.value


@pytest.mark.parametrize(
    ("method", "instead"),
    [
        ("ModelConfig", "use ModelMetadata"),
        ("ModelStatistics", "--metrics-listen"),
        ("RepositoryIndex", "ModelMetadata names it"),
        ("SystemSharedMemoryRegister", "raw_input_contents"),
        ("LogSettings", "--log-level"),
        ("NoSuchMethod", "ModelInfer"),
    ],
)
def test_raw_calls_get_unimplemented_with_the_reason_and_method(
    model_dir: Path, sidecar_factory: Any, method: str, instead: str
) -> None:
    handle = sidecar_factory(model_dir / "id_fp32.onnx")
    with grpc.insecure_channel(handle.address) as channel:
        err = _refusal(channel, f"/inference.GRPCInferenceService/{method}")
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.details().startswith(f"{method} is not offered by the modelplane sidecar")
    assert instead in err.details()
    info = error_info(err)
    assert info is not None and info.reason == "METHOD_NOT_OFFERED"
    assert dict(info.metadata) == {"method": method}


def test_without_admission_too_and_other_services_are_left_to_grpc() -> None:
    # add_to_server without an admission (ModelInfer on the server's threads).
    server = grpc.server(futures.ThreadPoolExecutor(2))
    add_to_server(InferenceServicer(ModelSlot()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            err = _refusal(channel, "/inference.GRPCInferenceService/ModelConfig")
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            info = error_info(err)
            assert info is not None and info.reason == "METHOD_NOT_OFFERED"
            other = _refusal(channel, "/other.Service/ModelConfig")
            assert other.code() == grpc.StatusCode.UNIMPLEMENTED
            assert error_info(other) is None
        assert stub(port).ServerLive(pb.ServerLiveRequest(), timeout=10).live
    finally:
        server.stop(0)
