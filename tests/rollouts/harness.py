"""Models, traffic and waiting for the end-to-end rollout tests (the processes come from
:mod:`modelplane.testing.processes`)."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelplane import Client
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.onnx_models import mlp, save

FEATURES = 8


def register(client: Client, tmp: Path, model: str, **kinds: Any) -> dict[str, int]:
    """Create ``model`` and register one version per keyword: a dict of ``mlp`` keyword
    arguments, or an ONNX model; returns key → version number."""
    client.create_model(model)
    out = {}
    for key, spec in kinds.items():
        onnx_model = mlp(FEATURES, (16,), 2, **spec) if isinstance(spec, dict) else spec
        path = save(onnx_model, tmp / f"{model}-{key}.onnx")
        out[key] = client.register_version(model, path, capture_env=False).version
    return out


def rows(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """``n`` feature rows like the ones the models were built for."""
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def infer(
    stub: pbg.GRPCInferenceServiceStub,
    model: str,
    row: np.ndarray[Any, Any],
    *,
    request_id: str = "",
    routing_key: str = "",
    version: str = "",
) -> pb.ModelInferResponse:
    """One single-row OIP request."""
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id or uuid.uuid4().hex,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, FEATURES]
            )
        ],
        raw_input_contents=[np.ascontiguousarray(row, np.float32).tobytes()],
    )
    if routing_key:
        request.parameters["routing_key"].string_param = routing_key
    return stub.ModelInfer(request, timeout=10)


@dataclass
class Load:
    """Steady single-row traffic from a few threads against several sidecars, counting the
    answering version of every reply and every failure with its status."""

    addresses: list[str]
    model: str
    threads: int = 2
    pause: float = 0.002
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    recent: collections.deque[tuple[float, str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def versions_since(self, since: float) -> dict[str, set[str]]:
        """Per sidecar address, the versions that answered after ``since``."""
        out: dict[str, set[str]] = collections.defaultdict(set)
        with self._lock:
            for at, address, version in self.recent:
                if at >= since:
                    out[address].add(version)
        return out

    def _run(self, worker: int) -> None:
        data = rows(512, seed=worker)
        channels = [grpc.insecure_channel(a) for a in self.addresses]
        stubs = [pbg.GRPCInferenceServiceStub(c) for c in channels]
        i = 0
        try:
            while not self._stop.is_set():
                k = i % len(stubs)
                try:
                    reply = infer(stubs[k], self.model, data[i % len(data)])
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append(f"{exc.code().name}: {exc.details()}")
                else:
                    with self._lock:
                        self.answers[reply.model_version] += 1
                        self.recent.append(
                            (time.monotonic(), self.addresses[k], reply.model_version)
                        )
                i += 1
                time.sleep(self.pause)
        finally:
            for c in channels:
                c.close()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail saying ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
