"""Steady Open Inference Protocol traffic for end-to-end tests and benchmarks.

:class:`Load` sends single-row FP32 requests (input ``input``, a fresh request id each) from a
few threads, round-robin over several sidecars, and remembers who answered what and when
(wall-clock time, comparable with the servers' timestamps). A failed request is remembered
under ``!CODE`` (e.g. ``!INVALID_ARGUMENT``) in place of a version.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from modelplane.oip import grpc_service_pb2 as pb
from modelplane.oip import grpc_service_pb2_grpc as pbg


def infer(
    stub: pbg.GRPCInferenceServiceStub,
    model: str,
    row: np.ndarray[Any, Any],
    *,
    request_id: str = "",
    routing_key: str = "",
    version: str = "",
) -> pb.ModelInferResponse:
    """One single-row request of ``row`` (FP32) to the input named ``input``."""
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id or uuid.uuid4().hex,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, len(row)]
            )
        ],
        raw_input_contents=[np.ascontiguousarray(row, np.float32).tobytes()],
    )
    if routing_key:
        request.parameters["routing_key"].string_param = routing_key
    return stub.ModelInfer(request, timeout=10)


@dataclass
class Load:
    """Traffic against ``addresses`` until :meth:`stop`, counting answers per version and
    keeping every failure's status and message."""

    addresses: list[str]
    model: str
    features: int = 8
    threads: int = 2
    pause: float = 0.002
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    #: (wall-clock time, address, version or ``!CODE``) of the latest answers.
    recent: collections.deque[tuple[float, str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        """Start the sender threads."""
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop sending and wait for the threads."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def versions_since(self, since: float) -> dict[str, set[str]]:
        """Per address, the versions (and ``!CODE`` failures) seen after ``since``."""
        out: dict[str, set[str]] = collections.defaultdict(set)
        with self._lock:
            for at, address, version in self.recent:
                if at >= since:
                    out[address].add(version)
        return out

    def last_seen(self, answers: set[str]) -> float:
        """The latest time any address answered with one of ``answers`` (NaN if none)."""
        with self._lock:
            return max((at for at, _, v in self.recent if v in answers), default=float("nan"))

    def _run(self, worker: int) -> None:
        data = np.random.default_rng(worker).standard_normal((512, self.features))
        channels = [grpc.insecure_channel(a) for a in self.addresses]
        stubs = [pbg.GRPCInferenceServiceStub(c) for c in channels]
        i = 0
        try:
            while not self._stop.is_set():
                k = i % len(stubs)
                try:
                    answer = infer(stubs[k], self.model, data[i % len(data)]).model_version
                except grpc.RpcError as exc:
                    code = exc.code()  # type: ignore[attr-defined]
                    answer = f"!{code.name}"
                    with self._lock:
                        self.failures.append(f"{code.name}: {exc.details()}")  # type: ignore[attr-defined]
                else:
                    with self._lock:
                        self.answers[answer] += 1
                with self._lock:
                    self.recent.append((time.time(), self.addresses[k], answer))
                i += 1
                time.sleep(self.pause)
        finally:
            for c in channels:
                c.close()
