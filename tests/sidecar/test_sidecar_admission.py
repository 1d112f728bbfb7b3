"""Load shedding ahead of the request threads: one-row calls beyond ``--max-queue-rows`` waiting
are refused at once with RESOURCE_EXHAUSTED (``QUEUE_FULL``) instead of queueing without bound
for a thread, while health checks and metadata keep answering. A real in-process sidecar on
loopback serving a compute-heavy ONNX model, flooded with concurrent calls."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import answered_or_shed, output_array, raw_request, stub

from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models


def _requests_by_code(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        s.labels["code"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelplane_inference_requests_total"
    }


def _flooded_sidecar(sidecar_factory: Any, tmp_path: Path, **settings: Any) -> Any:
    """A sidecar serving the compute-heavy model with a queue of 16 rows: hundreds of calls
    at once are mostly shed."""
    path = onnx_models.save(onnx_models.heavy_mlp(), tmp_path / "heavy.onnx")
    return sidecar_factory(
        path, max_batch_size=4, max_queue_rows=16, handler_threads=8, intra_op_threads=1,
        **settings,
    )  # fmt: skip


def test_one_row_calls_beyond_the_queue_limit_are_shed_and_health_answers(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = _flooded_sidecar(sidecar_factory, tmp_path, metrics_listen="127.0.0.1:0")
    assert handle.slot.current.batcher is not None
    s = stub(handle.port)
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    want = output_array(s.ModelInfer(raw_request("heavy", {"input": ("FP32", x)})), 0, np.float32)

    answered: list[float] = []
    problems: list[str] = []
    flooding = threading.Event()
    done = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            ready = stub(handle.port)
            flooding.wait(10)
            while not done.is_set():
                start = time.monotonic()
                try:
                    # A probe's deadline (kubelet's default is 1 s), with room for a loaded
                    # test machine: a starved health check waits for the flood to end.
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    is_ready = ready.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
                except grpc.RpcError as exc:
                    problems.append(f"{exc.code().name}: {exc.details()}")
                    continue
                if status != health_pb2.HealthCheckResponse.SERVING or not is_ready:
                    problems.append(f"status {status}, ready {is_ready}")
                answered.append(time.monotonic() - start)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    futures = []
    try:
        for _ in range(400):
            futures.append(
                s.ModelInfer.future(raw_request("heavy", {"input": ("FP32", x)}), timeout=60)
            )
            flooding.set()
        codes: dict[str, int] = {}
        for future in futures:
            code = answered_or_shed(
                future,
                lambda r: np.testing.assert_allclose(
                    output_array(r, 0, np.float32), want, rtol=1e-5
                ),
            )
            codes[code] = codes.get(code, 0) + 1
    finally:
        done.set()
        prober.join(30)
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes
    assert codes.get("OK", 0) >= 8, codes
    assert answered and not problems, problems
    # Every refusal is counted, the shed calls among them.
    by_code = _requests_by_code(handle.metrics_port)
    assert by_code["RESOURCE_EXHAUSTED"] == codes["RESOURCE_EXHAUSTED"]
    assert by_code["OK"] == codes["OK"] + 1
    # Still serving afterwards.
    reply = s.ModelInfer(raw_request("heavy", {"input": ("FP32", x)}), timeout=10)
    np.testing.assert_allclose(output_array(reply, 0, np.float32), want, rtol=1e-5)


def test_calls_within_the_limit_are_never_shed(sidecar_factory: Any, tmp_path: Path) -> None:
    path = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    handle = sidecar_factory(path, max_batch_size=8, max_queue_delay=0.002)
    s = stub(handle.port)
    x = np.ones((2, 32), np.float32)
    futures = [
        s.ModelInfer.future(raw_request("mlp", {"input": ("FP32", x)}), timeout=30)
        for _ in range(300)
    ]
    assert all(len(f.result().outputs) == 1 for f in futures)


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_calls_shed_at_admission_are_logged_one_record_each(
    sidecar_factory: Any, tmp_path: Path, durability: str
) -> None:
    """A call the admission turns away is not read, but the prediction log still holds one
    record of it, without features, under its ``x-request-id``: as many records as sheds."""
    from sidecar.predlog import PredictionLogSettings, read_logs

    handle = _flooded_sidecar(
        sidecar_factory,
        tmp_path,
        log_settings=PredictionLogSettings(
            dir=tmp_path / "log", flush_interval=0.02, durability=durability
        ),
    )
    s = stub(handle.port)
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    futures = [
        s.ModelInfer.future(
            raw_request("heavy", {"input": ("FP32", x)}),
            timeout=60,
            metadata=[("x-request-id", f"call-{i}")],
        )
        for i in range(300)
    ]
    shed = set()
    for i, future in enumerate(futures):
        if answered_or_shed(future, lambda r: None) == "RESOURCE_EXHAUSTED":
            shed.add(f"call-{i}")
    assert shed
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    refused = [r for r in table.to_pylist() if r["status_code"] == "RESOURCE_EXHAUSTED"]
    assert {r["request_id"] for r in refused} == shed
    assert len(refused) == len(shed)
    assert all(r["status_reason"] == "QUEUE_FULL" and r["x_0"] is None for r in refused)
