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
    with grpc.insecure_channel(address) as channel:
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
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not report SERVING within {timeout:.0f}s")
