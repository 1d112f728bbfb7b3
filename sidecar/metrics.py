"""Prometheus metrics of the sidecar (``modelplane_inference_*``, and in managed mode
``modelplane_sidecar_*``).

:class:`NoMetrics` stands in when no metrics endpoint was asked for, so the hot path pays
nothing. The metric families live once per registry (:class:`InferenceFamilies`); each
served model version binds its own label children (:class:`SidecarMetrics`), so a managed
sidecar serves several versions from one registry and drops a retired version's series with
:meth:`SidecarMetrics.close`. Labels stay bounded: ``model`` (the deployment in managed mode),
``version``, ``code`` on the request counter, and ``provider`` and ``arm`` on the info gauge.

With several worker processes, prometheus_client's multiprocess mode (the
``PROMETHEUS_MULTIPROC_DIR`` environment) merges the workers' values in the parent. That mode
cannot remove series: closing a binding there zeroes its gauges instead, and its counters stay
until the worker exits.

A managed sidecar also counts, per deployment (:class:`ManagedMetrics`), what its reports to
the control plane left out, the reports refused or failed (by gRPC code), the reports dropped
unsent from a full queue and the watch streams replaced; their labels are bounded too
(``reason`` is a fixed set, ``code`` a gRPC status code name).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
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
#: Request codes whose counters exist from the start (a rate over them is never empty).
_CODES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED")


def multiprocess() -> bool:
    """Whether prometheus_client writes to shared files (``--workers N``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class RegistryFamilies:
    """Metric families created once per registry, shared by every version bound to them.

    Bindings are counted per label key, so that a version retired and loaded again at once
    keeps its series until its last binding closes.
    """

    _lock = threading.Lock()
    _known: weakref.WeakKeyDictionary[CollectorRegistry, dict[type, Any]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        # No reference to ``registry`` is kept: the weak map below must let it go.
        self._bindings: dict[tuple[str, ...], int] = {}
        #: Extra label values (request codes) seen per key, to remove with the key.
        self._extra: dict[tuple[str, ...], set[str]] = {}

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Any:
        """The families of this class in ``registry``, created on first use."""
        with cls._lock:
            per_registry = cls._known.setdefault(registry, {})
            families = per_registry.get(cls)
            if families is None:
                families = per_registry[cls] = cls(registry)
            return families

    def acquire(self, key: tuple[str, ...]) -> None:
        """One more binding of ``key``."""
        with self._lock:
            self._bindings[key] = self._bindings.get(key, 0) + 1

    def note(self, key: tuple[str, ...], value: str) -> None:
        """Remember that a series of ``key`` carries the extra label ``value``."""
        with self._lock:
            self._extra.setdefault(key, set()).add(value)

    def release(self, key: tuple[str, ...]) -> set[str] | None:
        """One binding of ``key`` fewer; when it was the last, the extra label values its
        series carried (else None)."""
        with self._lock:
            left = self._bindings.get(key, 0) - 1
            if left > 0:
                self._bindings[key] = left
                return None
            self._bindings.pop(key, None)
            return self._extra.pop(key, set())


class InferenceFamilies(RegistryFamilies):
    """The ``modelplane_inference_*`` families of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "livesum"} if multiprocess() else {}
        names = ["model", "version"]
        self.requests = Counter(
            "modelplane_inference_requests",
            "Inference requests answered, by gRPC status code",
            [*names, "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelplane_inference_request_duration_seconds",
            "Time from receiving a ModelInfer request to its answer, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        )
        self.queue = Histogram(
            "modelplane_inference_queue_duration_seconds",
            "Time a request waited in the batch queue, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        )
        self.compute = Histogram(
            "modelplane_inference_compute_duration_seconds",
            "Time of one ONNX Runtime session call, in seconds",
            names,
            buckets=_LATENCY,
            registry=registry,
        )
        self.batch = Histogram(
            "modelplane_inference_batch_size",
            "Rows per ONNX Runtime session call",
            names,
            buckets=_ROWS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "modelplane_inference_in_flight_requests",
            "ModelInfer requests being handled",
            names,
            registry=registry,
            **gauge_mode,
        )
        self.queue_rows = Gauge(
            "modelplane_inference_queue_rows",
            "Rows waiting in the batch queue",
            names,
            registry=registry,
            **gauge_mode,
        )
        self.info = Gauge(
            "modelplane_inference_model_info",
            "A loaded model version, the execution provider its session got and its arm "
            "(champion, candidate)",
            [*names, "provider", "arm"],
            registry=registry,
            multiprocess_mode="max",
        )

    @property
    def per_version(self) -> tuple[Any, ...]:
        """The families labelled by (model, version) alone."""
        return (
            self.latency,
            self.queue,
            self.compute,
            self.batch,
            self.in_flight,
            self.queue_rows,
        )


class ManagedFamilies(RegistryFamilies):
    """The ``modelplane_sidecar_*`` families of one registry (managed mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.left_out = Counter(
            "modelplane_sidecar_report_records_left_out",
            "Requests or rows the window reports left out, by reason (late_version: answered "
            "by a version that no longer holds its arm; label_beyond_limit: a predicted label "
            "beyond those an arm reports)",
            ["model", "reason"],
            registry=registry,
        )
        self.refused = Counter(
            "modelplane_sidecar_reports_refused",
            "Window reports the control plane refused for good (dropped), by gRPC status code",
            ["model", "code"],
            registry=registry,
        )
        self.dropped = Counter(
            "modelplane_sidecar_reports_dropped",
            "Window reports dropped unsent because the queue of reports waiting to be sent was "
            "full (the control plane unreachable or failing for that many windows): the oldest "
            "goes, and the requests it counted are missing from the control plane's evidence",
            ["model"],
            registry=registry,
        )
        self.failures = Counter(
            "modelplane_sidecar_report_failures",
            "Failed attempts to send a window report, by gRPC status code",
            ["model", "code"],
            registry=registry,
        )
        self.reconnects = Counter(
            "modelplane_sidecar_watch_reconnects",
            "Watch streams replaced by a new one, by reason (stale: no state for three heartbeats)",
            ["model", "reason"],
            registry=registry,
        )


#: ``reason`` values of the managed counters, whose series exist from the start.
LATE_VERSION = "late_version"
LABEL_BEYOND_LIMIT = "label_beyond_limit"
STALE = "stale"


def dropped_records_counter(registry: CollectorRegistry | None, model: str) -> Callable[[], None]:
    """What counts a record a lossy observer hub dropped (drift without a prediction log,
    fallen behind): ``modelplane_observer_dropped_records_total{model}``."""
    if registry is None:
        return lambda: None
    counter = Counter(
        "modelplane_observer_dropped_records",
        "Records the observers fell too far behind to take, dropped: drift without a "
        "prediction log (a prediction log or a managed sidecar's reports make requests wait "
        "instead)",
        ["model"],
        registry=registry,
    )
    return counter.labels(model=model).inc


def grpc_code_label(code: Any) -> str:
    """A ``code`` label value: the gRPC status code's name, UNKNOWN for anything else (an
    error that is no RPC error), so the label stays a fixed set."""
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else "UNKNOWN"


class NoManagedMetrics:
    """Managed-mode counters that record nothing (metrics off)."""

    def left_out(self, reason: str, count: int) -> None:
        """``count`` requests or rows left out of a report for ``reason``."""

    def report_refused(self, code: Any) -> None:
        """A window report refused for good with ``code`` (a grpc.StatusCode or None)."""

    def report_failed(self, code: Any) -> None:
        """A failed attempt to send a window report, with ``code`` (grpc.StatusCode or None)."""

    def report_dropped(self) -> None:
        """A window report dropped unsent from a full queue."""

    def reconnected(self, reason: str) -> None:
        """A watch stream replaced for ``reason``."""


class ManagedMetrics(NoManagedMetrics):
    """The managed-mode counters of deployment ``model``, bound in ``registry``. Counters
    only, never removed: in multiprocess mode each worker's values are summed."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        families: ManagedFamilies = ManagedFamilies.of(registry)
        self._families = families
        self._model = model
        for reason in (LATE_VERSION, LABEL_BEYOND_LIMIT):
            families.left_out.labels(model, reason)
        families.reconnects.labels(model, STALE)
        self._dropped = families.dropped.labels(model)

    def left_out(self, reason: str, count: int) -> None:
        if count > 0:
            self._families.left_out.labels(self._model, reason).inc(count)

    def report_refused(self, code: Any) -> None:
        self._families.refused.labels(self._model, grpc_code_label(code)).inc()

    def report_failed(self, code: Any) -> None:
        self._families.failures.labels(self._model, grpc_code_label(code)).inc()

    def report_dropped(self) -> None:
        self._dropped.inc()

    def reconnected(self, reason: str) -> None:
        self._families.reconnects.labels(self._model, reason).inc()


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

    def set_arm(self, arm: str) -> None:
        """The version now serves as ``arm`` (managed mode)."""

    def close(self) -> None:
        """The version is no longer served: drop its series."""


class SidecarMetrics(NoMetrics):
    """The sidecar's metrics for one model version, bound in ``registry``."""

    enabled = True

    def __init__(
        self,
        registry: CollectorRegistry,
        model: str,
        version: str,
        provider: str,
        arm: str = "champion",
    ) -> None:
        families: InferenceFamilies = InferenceFamilies.of(registry)
        self._families = families
        self._key = (model, version)
        self._provider = provider
        self._arm = arm
        self._closed = False
        self._lock = threading.Lock()
        families.acquire(self._key)
        self._codes: dict[str, Any] = {}
        self._latency = families.latency.labels(model, version)
        self._queue = families.queue.labels(model, version)
        self._compute = families.compute.labels(model, version)
        self._batch = families.batch.labels(model, version)
        self._in_flight = families.in_flight.labels(model, version)
        self._queue_rows = families.queue_rows.labels(model, version)
        families.info.labels(model, version, provider, arm).set(1)
        for code in _CODES:
            self._child(code)

    def _child(self, code: str) -> Any:
        child = self._codes.get(code)
        if child is None:
            self._families.note(self._key, code)
            child = self._codes[code] = self._families.requests.labels(*self._key, code)
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

    def set_arm(self, arm: str) -> None:
        """Move the info series to ``arm``."""
        with self._lock:
            if self._closed or arm == self._arm:
                return
            info = self._families.info
            old = (*self._key, self._provider, self._arm)
            if multiprocess():
                info.labels(*old).set(0)
            else:
                info.remove(*old)
            self._arm = arm
            info.labels(*self._key, self._provider, arm).set(1)

    def close(self) -> None:
        """Drop this version's series (once its last binding closes); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            families = self._families
            codes = families.release(self._key)
            if codes is None:
                return
            info = (*self._key, self._provider, self._arm)
            if multiprocess():
                # Series cannot be removed from the shared files: leave nothing live behind.
                self._in_flight.set(0)
                self._queue_rows.set(0)
                families.info.labels(*info).set(0)
                return
            for family in families.per_version:
                family.remove(*self._key)
            for code in codes:
                families.requests.remove(*self._key, code)
            families.info.remove(*info)
