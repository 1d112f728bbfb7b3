"""Waiting for a server started in another process to report SERVING."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_serving(
    address: str, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Poll grpc.health.v1 at ``address`` until the server (all its services) is SERVING.

    Raises ``RuntimeError`` when ``proc`` exits first and ``TimeoutError`` after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    # A channel that found nobody listening waits out a growing reconnect backoff (1 s, then
    # 1.6 s, 2.6 s, ...) before it tries again: a server ready in 3 s would be seen at 5 s.
    # Retry every 100 ms instead.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 100),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server process exited with {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not report SERVING within {timeout:.0f}s")
