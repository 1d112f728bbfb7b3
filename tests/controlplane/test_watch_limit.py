"""Watch streams hold a server thread each for as long as they last: they get threads of their
own, so however many sidecars watch, other calls and health checks are answered; past
``max_watches`` a watch is refused (RESOURCE_EXHAUSTED, TOO_MANY_WATCHES) and a slot frees
when a watcher leaves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplane.errors import ResourceExhausted
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import deployed


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def test_watches_never_starve_other_calls_and_are_bounded(tmp_path: Path) -> None:
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", max_workers=2, max_watches=3
    )
    streams: list[Iterator[Any]] = []
    try:
        with cp.client() as c:
            dep, _ = deployed(c, tmp_path)
            for _ in range(3):
                stream = c.watch_deployment(dep, timeout=60)
                assert next(stream).generation >= 1  # the stream holds its thread from here
                streams.append(stream)
            # Three watches open on a server of two RPC threads: calls are still answered.
            assert _health(cp.address) == health_pb2.HealthCheckResponse.SERVING
            assert c.get_deployment(dep).name == f"deployments/{dep}"
            with pytest.raises(ResourceExhausted) as refused:
                next(c.watch_deployment(dep, timeout=60))
            assert refused.value.reason == "TOO_MANY_WATCHES"
            assert "max_watches" in refused.value.message
            streams.pop().close()  # the watcher leaves: its slot frees
            for _ in range(200):
                try:
                    again = c.watch_deployment(dep, timeout=60)
                    assert next(again).generation >= 1
                    streams.append(again)
                    break
                except ResourceExhausted:
                    time.sleep(0.05)  # the server notices the cancelled stream within its poll
            else:
                raise AssertionError("a freed watch slot was never reused")
            assert _health(cp.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for stream in streams:
            stream.close()
        cp.handle.stop(0)
