"""Prometheus metrics of the sidecar (``modelplane_inference_*``).

:class:`NoMetrics` stands in when no metrics endpoint was asked for, so the hot path pays
nothing. With several worker processes, prometheus_client's multiprocess mode (the
``PROMETHEUS_MULTIPROC_DIR`` environment) merges the workers' values in the parent.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class NoMetrics:
    """Metrics that record nothing."""

    #: Whether anything is recorded (the request path skips its clock reads otherwise).
    enabled = False

    def request(self, code: str, seconds: float) -> None:
        """Count one finished request."""

    def queued(self, seconds: float) -> None:
        """Record how long a request waited for its batch."""

    def batch(self, rows: int, seconds: float) -> None:
        """Record one session call."""

    def in_flight(self, delta: int) -> None:
        """Requests being handled went up or down by ``delta``."""

    def queue_rows(self, rows: int) -> None:
        """Rows now waiting in the batch queue."""


class SidecarMetrics(NoMetrics):
    """The sidecar's metrics for one model version, in ``registry``."""

    enabled = True

    def __init__(self, registry: CollectorRegistry, model: str, version: str, provider: str):
        multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "livesum"} if multi else {}
        labels = {"model": model, "version": version}
        names = ["model", "version"]
        self._requests = Counter(
            "modelplane_inference_requests",
            "Inference requests answered, by gRPC status code",
            [*names, "code"],
            registry=registry,
        )
        self._codes: dict[str, Any] = {}
        self._labels = labels
        self._latency = Histogram(
            "modelplane_inference_request_duration_seconds",
            "Time from receiving a ModelInfer request to its answer, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        ).labels(**labels)
        self._queue = Histogram(
            "modelplane_inference_queue_duration_seconds",
            "Time a request waited in the batch queue, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        ).labels(**labels)
        self._compute = Histogram(
            "modelplane_inference_compute_duration_seconds",
            "Time of one ONNX Runtime session call, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        ).labels(**labels)
        self._batch = Histogram(
            "modelplane_inference_batch_size",
            "Rows per ONNX Runtime session call",
            names,
            buckets=_ROWS,
            registry=registry,
        ).labels(**labels)
        self._in_flight = Gauge(
            "modelplane_inference_in_flight_requests",
            "ModelInfer requests being handled",
            names,
            registry=registry,
            **gauge_mode,
        ).labels(**labels)
        self._queue_rows = Gauge(
            "modelplane_inference_queue_rows",
            "Rows waiting in the batch queue",
            names,
            registry=registry,
            **gauge_mode,
        ).labels(**labels)
        Gauge(
            "modelplane_inference_model_info",
            "The served model version and the execution provider its session got",
            [*names, "provider"],
            registry=registry,
            multiprocess_mode="max",
        ).labels(provider=provider, **labels).set(1)
        for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
            self._child(code)

    def _child(self, code: str) -> Any:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._requests.labels(code=code, **self._labels)
        return child

    def request(self, code: str, seconds: float) -> None:
        self._child(code).inc()
        self._latency.observe(seconds)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def batch(self, rows: int, seconds: float) -> None:
        self._batch.observe(rows)
        self._compute.observe(seconds)

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)

    def queue_rows(self, rows: int) -> None:
        self._queue_rows.set(rows)
