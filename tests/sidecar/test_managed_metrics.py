"""Prometheus metrics of managed sidecars, scraped over HTTP: series per version across a
champion switch, retired versions' series removed, drift gauges for versions with a baseline,
several workers as replicas of their own with merged metrics; plus the bindings themselves.
Sidecars run on a real control plane (real rollouts; the baseline built from the version's
train dataset), except where a test reads what only the control-plane double records: the
watch streams opened and the replica each names."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from control_plane_double import FakeControlPlane, state
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, spawn_sidecar, stub

from modelplane.oip import grpc_service_pb2 as pb

NAME = "fraud"
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _request(seed: int = 0, **kw: Any) -> Any:
    x = np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)
    return raw_request(NAME, {"input": ("FP32", x)}, **kw)


def _scrape(port: int) -> Series:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def _versions_in(series: Series, prefix: str) -> set[str]:
    return {dict(labels).get("version", "") for name, labels in series if name.startswith(prefix)}


def _wait_generation(handle: Any, generation: int) -> None:
    deadline = time.monotonic() + 60
    while handle.manager.table.generation != generation and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.manager.table.generation == generation


def test_series_per_version_across_a_champion_switch(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    import pyarrow as pa

    plane = real_plane
    rng = np.random.default_rng(0)
    columns = {f"f{j}": rng.standard_normal(2000) for j in range(8)}
    # Version 1's train dataset: the control plane builds its baseline; version 2 has none.
    plane.deploy({n: artifacts[n] for n in (1, 2)}, trains={1: pa.table(columns)})
    handle = real_managed(metrics_listen="127.0.0.1:0", drift_window_rows=20)
    assert handle.metrics_port
    assert handle.wait_ready(60)
    s = stub(handle.port)
    for i in range(25):
        assert s.ModelInfer(_request(seed=i)).model_version == "1"
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(_request(model_version="9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    deadline = time.monotonic() + 20
    series = _scrape(handle.metrics_port)
    while (
        _value(series, "modelplane_drift_psi", model=NAME, version="1", feature="f0") is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        series = _scrape(handle.metrics_port)
    requests = "modelplane_inference_requests_total"
    assert _value(series, requests, model=NAME, version="1", code="OK") == 25
    assert _value(series, requests, model=NAME, version="1", code="NOT_FOUND") == 1
    assert (
        _value(
            series, "modelplane_inference_request_duration_seconds_count", model=NAME, version="1"
        )
        == 26
    )
    assert _value(series, "modelplane_inference_in_flight_requests", model=NAME, version="1") == 0
    assert _value(series, "modelplane_inference_queue_rows", model=NAME, version="1") == 0
    assert _value(series, "modelplane_inference_batch_size_count", model=NAME, version="1") == 25
    # The managed counters exist from the start, at zero.
    left_out = "modelplane_sidecar_report_records_left_out_total"
    assert _value(series, left_out, model=NAME, reason="late_version") == 0
    assert _value(series, left_out, model=NAME, reason="label_beyond_limit") == 0
    assert (
        _value(series, "modelplane_sidecar_watch_reconnects_total", model=NAME, reason="stale") == 0
    )
    info = "modelplane_inference_model_info"
    assert (
        _value(
            series, info, model=NAME, version="1", provider="CPUExecutionProvider", arm="champion"
        )
        == 1
    )
    # The champion has a baseline: its drift gauges are exported like a plain sidecar's.
    assert _value(series, "modelplane_drift_window_rows", model=NAME, version="1") == 20
    for feature in columns:
        assert (
            _value(series, "modelplane_drift_psi", model=NAME, version="1", feature=feature)
            is not None
        )

    # A canary: the candidate's series appear beside the champion's.
    plane.canary(2, 50.0)
    _wait_generation(handle, plane.client.get_deployment(NAME).generation)
    for i in range(5):
        assert s.ModelInfer(_request(seed=i, model_version="2")).model_version == "2"
    series = _scrape(handle.metrics_port)
    assert _value(series, requests, model=NAME, version="2", code="OK") == 5
    assert _value(series, requests, model=NAME, version="1", code="OK") == 25
    cpu = "CPUExecutionProvider"
    assert _value(series, info, model=NAME, version="2", provider=cpu, arm="candidate") == 1
    assert _value(series, "modelplane_inference_in_flight_requests", model=NAME, version="2") == 0
    assert _value(series, "modelplane_inference_queue_rows", model=NAME, version="2") == 0
    assert _versions_in(series, "modelplane_drift_") == {"1"}  # version 2 has no baseline

    # Version 2 becomes the champion alone: version 1 retires and its series go.
    _wait_generation(handle, plane.client.promote_rollout(NAME).generation)
    for i in range(7):
        assert s.ModelInfer(_request(seed=i)).model_version == "2"
    deadline = time.monotonic() + 20
    while handle.manager.retiring and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.manager.retiring == []
    series = _scrape(handle.metrics_port)
    assert _value(series, requests, model=NAME, version="2", code="OK") == 12
    assert _versions_in(series, "modelplane_inference_") == {"2"}
    assert _versions_in(series, "modelplane_drift_") == set()
    assert [dict(labels) for name, labels in series if name == info] == [
        {"model": NAME, "version": "2", "provider": cpu, "arm": "champion"}
    ]


def test_records_left_out_of_reports_are_counted_by_reason() -> None:
    from types import SimpleNamespace

    from sidecar.managed.labels import PredictionIndex
    from sidecar.managed.observer import ManagedObserver
    from sidecar.metrics import ManagedMetrics

    registry = CollectorRegistry()
    emitted: list[Any] = []
    observer = ManagedObserver(
        NAME,
        "replica",
        tables=lambda: None,
        index=PredictionIndex(16),
        emit=emitted.append,
        metrics=ManagedMetrics(registry, NAME),
    )

    def window(late: int, labels: int) -> Any:
        return SimpleNamespace(
            late=late,
            labels_left_out=labels,
            table=SimpleNamespace(generation=1),
            close=lambda *args: (object(), {}),
        )

    def get(reason: str) -> float | None:
        return registry.get_sample_value(
            "modelplane_sidecar_report_records_left_out_total", {"model": NAME, "reason": reason}
        )

    observer._close(window(late=3, labels=5))
    observer._close(window(late=2, labels=0))
    assert len(emitted) == 2
    assert observer.late == 5 and observer.labels_left_out == 5
    assert get("late_version") == 5
    assert get("label_beyond_limit") == 5


def test_metrics_listener_that_cannot_bind_fails_the_start(
    plane: FakeControlPlane, tmp_path: Path
) -> None:
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = SidecarSettings(  # type: ignore[call-arg]
            control_plane=plane.address,
            deployment=NAME,
            listen="127.0.0.1:0",
            metrics_listen=f"127.0.0.1:{port}",
            cache_dir=tmp_path / "cache",
        )
        with pytest.raises(OSError):
            start(settings)
    assert plane.watchers == 0  # nothing was started


def test_bindings_share_families_and_remove_only_the_last() -> None:
    from sidecar.driftfeed import DriftGauges
    from sidecar.metrics import SidecarMetrics

    registry = CollectorRegistry()
    one = SidecarMetrics(registry, "m", "1", "CPUExecutionProvider")
    again = SidecarMetrics(registry, "m", "1", "CPUExecutionProvider")  # reloaded at once
    two = SidecarMetrics(registry, "m", "2", "CPUExecutionProvider", arm="candidate")
    gauges = DriftGauges(registry, "m", "2")
    one.request("OK", 0.001)
    again.request("UNAVAILABLE", 0.001)
    two.request("OK", 0.001)
    two.set_arm("champion")

    def versions() -> set[str | None]:
        return {s.labels.get("version") for f in registry.collect() for s in f.samples}

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": "m", **labels})

    assert get("modelplane_inference_requests_total", version="1", code="OK") == 1
    assert get("modelplane_inference_requests_total", version="1", code="UNAVAILABLE") == 1
    info = "modelplane_inference_model_info"
    assert get(info, version="2", provider="CPUExecutionProvider", arm="champion") == 1
    assert get(info, version="2", provider="CPUExecutionProvider", arm="candidate") is None
    one.close()
    one.close()  # idempotent
    assert versions() == {"1", "2"}
    again.close()
    assert versions() == {"2"}
    two.close()
    gauges.close()
    assert versions() == set()


@pytest.mark.slow
def test_workers_are_replicas_of_their_own_with_merged_metrics(
    plane: FakeControlPlane, artifacts: dict[int, bytes], tmp_path: Path
) -> None:
    sha = plane.add_blob(artifacts[1])
    plane.push(state(NAME, 1, {1: (sha, len(artifacts[1]), "")}, champion=1))
    proc, ready = spawn_sidecar(
        [
            "--control-plane",
            plane.address,
            "--deployment",
            NAME,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--replica",
            "pod-a",
            "--device",
            "cpu",
        ],
        timeout=180,
        stderr=tmp_path / "stderr.log",
    )
    try:
        assert ready["workers"] == 2 and ready["metrics_port"]
        total = 0
        for k in range(8):  # fresh channels spread over the workers
            s = stub(ready["port"])
            for i in range(5):
                assert s.ModelInfer(_request(seed=k * 10 + i)).model_version == "1"
                total += 1
        series = _scrape(ready["metrics_port"])
        ok = _value(
            series, "modelplane_inference_requests_total", model=NAME, version="1", code="OK"
        )
        assert ok == total
        assert (
            _value(series, "modelplane_inference_in_flight_requests", model=NAME, version="1") == 0
        )
        # The managed counters of the workers merge (summed) under the deployment's name.
        reconnects = "modelplane_sidecar_watch_reconnects_total"
        assert _value(series, reconnects, model=NAME, reason="stale") == 0
        # Each worker watches and reports as its own replica, named after --replica and its pid.
        watchers = {w.replica for w in plane.watch_requests}
        assert len(watchers) == 2 and all(r.startswith("pod-a-") for r in watchers)
        reports = plane.wait_reports(lambda rs: len({r.replica for r in rs}) == 2, timeout=30)
        assert {r.replica for r in reports} == watchers
        served = plane.wait_reports(
            lambda rs: sum(a.requests for r in rs for a in r.arms) >= total, timeout=30
        )
        assert sum(a.requests for r in served for a in r.arms) == total
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_metrics_are_off_without_a_listener(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    """Metrics off (the default): nothing listens, requests still answer."""
    real_plane.deploy({1: artifacts[1]})
    handle = real_managed()
    assert handle.wait_ready(60)
    assert handle.metrics_port is None
    s = stub(handle.port)
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    assert s.ModelInfer(_request()).model_version == "1"
