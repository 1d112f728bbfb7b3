"""Real processes for the end-to-end rollout tests: a control plane and managed sidecars.

Everything runs as the CLI runs it (``python -m modelplane.cli ...``) so that a test can kill
the control plane outright and restart it on the same database.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
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
from modelplane.testing import wait_serving
from modelplane.testing.onnx_models import mlp, save

FEATURES = 8


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process, its address and its log file."""

    argv: list[str]
    address: str
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Server:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()
        try:
            wait_serving(self.address, timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise AssertionError(f"{self.argv[3:5]} did not start: {exc}\n{self.tail()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crashed control plane)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def controlplane(tmp: Path, db_url: str, *, name: str = "cp", port: int = 0) -> Server:
    """A control plane (not yet started) on ``db_url`` sharing ``tmp/artifacts``."""
    address = f"127.0.0.1:{port or free_port()}"
    argv = [
        sys.executable,
        "-m",
        "modelplane.cli",
        "controlplane",
        "serve",
        "--listen",
        address,
        "--db",
        db_url,
        "--artifact-root",
        str(tmp / "artifacts"),
        "--log-level",
        "info",
    ]
    return Server(argv, address, tmp / f"{name}.log", _env())


def sidecar(tmp: Path, control_plane: str, deployment: str, *, name: str) -> Server:
    """A managed sidecar (not yet started) following ``deployment``."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "modelplane.cli",
        "sidecar",
        "serve",
        "--control-plane",
        control_plane,
        "--deployment",
        deployment,
        "--listen",
        address,
        "--log-dir",
        str(tmp / name / "log"),
        "--max-batch-size",
        "1",
    ]
    return Server(argv, address, tmp / f"{name}.log", _env())


def register(client: Client, tmp: Path, model: str, **kinds: dict[str, Any]) -> dict[str, int]:
    """Create ``model`` and register one version per keyword (``mlp`` keyword arguments);
    returns key → version number."""
    client.create_model(model)
    out = {}
    for key, kw in kinds.items():
        path = save(mlp(FEATURES, (16,), 2, **kw), tmp / f"{model}-{key}.onnx")
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
