"""Helpers shared by the sidecar tests: OIP stubs, request builders, a subprocess server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelplane.testing import launch

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# For spawn_sidecar: no file may grow past 64 KiB, so the log's writes fail with EFBIG.
FAILING_DISK = launch.prefix(file_size_limit=64 * 1024)


def stub(port: int) -> Any:
    """An OIP stub on a fresh channel to ``127.0.0.1:port``."""
    from modelplane.oip import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
        ],
    )
    return pb_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, inputs: dict[str, tuple[str, np.ndarray[Any, Any]]], **kw: Any) -> Any:
    """A ModelInferRequest carrying ``inputs`` ({name: (datatype, array)}) as raw bytes."""
    from modelplane.oip import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model, **kw)
    for name, (datatype, array) in inputs.items():
        req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            req.raw_input_contents.append(
                b"".join(len(v).to_bytes(4, "little") + v for v in array.reshape(-1))
            )
        else:
            req.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return req


def rows_by_request(table: Any) -> dict[str, list[dict[str, Any]]]:
    """A prediction log table's records by request id, each request's in row order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["request_id"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["row"])
    return out


def output_array(response: Any, index: int, dtype: Any) -> np.ndarray[Any, Any]:
    """Output ``index`` of a response as a numpy array."""
    out = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(out.shape)


def spawn_sidecar(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    stderr: Path | None = None,
    launch: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run ``modelplane sidecar serve ARGS`` in a subprocess; returns it and its ready line.

    ``stderr`` names a file for the server's JSON logs (discarded otherwise); ``launch`` is
    a :func:`modelplane.testing.launch.prefix` that applies process limits first."""
    full_env = {**os.environ, **(env or {})}
    err = stderr.open("w") if stderr is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [*launch, PYTHON, "-m", "modelplane.cli", "sidecar", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=full_env,
        cwd=ROOT,
    )
    if stderr is not None:
        err.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
            raise AssertionError(f"sidecar exited with {proc.returncode} before it was ready")
        if '"sidecar ready"' in line:
            return proc, json.loads(line)
    proc.kill()
    raise AssertionError("sidecar did not get ready in time")


def health_status(port: int, service: str = "") -> str:
    """The gRPC health status name of ``service`` on ``127.0.0.1:port``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    """``check()``'s result once it stops failing (an assertion or an RPC error); the last
    failure after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def managed_request(model: str, rows: int = 1, seed: int = 0, **kw: Any) -> Any:
    """A request of ``rows`` random rows for the 8-feature models of the managed tests."""
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    return raw_request(model, {"input": ("FP32", x)}, **kw)


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes."""
    from modelplane.testing.processes import proc_stats

    return [child for child, fields in proc_stats() if int(fields[1]) == pid]


def answered_or_shed(call: Any, check: Any = None) -> str:
    """``OK`` when the ModelInfer future ``call`` was answered (``check(response)`` holding),
    else ``RESOURCE_EXHAUSTED``: a refusal must be the queue limit's (reason ``QUEUE_FULL``)."""
    from modelplane.errors import error_info

    try:
        response = call.result()
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
        info = error_info(exc)
        assert info is not None and info.reason == "QUEUE_FULL"
        return "RESOURCE_EXHAUSTED"
    if check is not None:
        check(response)
    return "OK"


def hold_observer(observer: Any, monkeypatch: Any) -> threading.Event:
    """Hold a managed sidecar's observer hub on its next wake-up (as a slow disk would), so
    that every record published meanwhile reaches the observer in one dispatch once the
    returned event is set."""
    held, release = threading.Event(), threading.Event()
    tick = observer.on_tick

    def holding() -> None:
        held.set()
        release.wait(60)
        tick()

    monkeypatch.setattr(observer, "on_tick", holding)
    assert held.wait(10)
    return release


@contextmanager
def managed_sidecars(address: str, tmp: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process managed sidecars of deployment ``fraud`` on the control plane at
    ``address`` (caches under ``tmp``): ``factory(log_settings=None, **settings)``; all stop
    when the block ends."""
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    handles: list[Any] = []

    def factory(log_settings: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("deployment", "fraud")
        kwargs.setdefault("listen", "127.0.0.1:0")
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("warmup_runs", 1)
        kwargs.setdefault("cache_dir", tmp / f"cache{len(handles)}")
        handle = start(SidecarSettings(control_plane=address, **kwargs), log_settings=log_settings)
        handles.append(handle)
        return handle

    factory.handles = handles  # type: ignore[attr-defined]
    try:
        yield factory
    finally:
        for h in handles:
            h.stop(0)
