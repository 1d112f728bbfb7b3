"""Prometheus metrics of the prediction log (``modelplane_prediction_log_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_WAIT_BUCKETS = (1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class PredictionLogMetrics:
    """Counters of one writer, registered in ``registry``.

    Without a registry they go to a private one (nothing exported): pass the server's
    registry to publish them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        prefix = "modelplane_prediction_log"
        self.records = Counter(
            f"{prefix}_records",
            "Records written to the prediction log, by kind (prediction or rejected).",
            ["kind"],
            registry=self.registry,
        )
        self.bytes = Counter(
            f"{prefix}_bytes", "Bytes written to prediction log files.", registry=self.registry
        )
        self.files = Counter(
            f"{prefix}_files", "Prediction log files created.", registry=self.registry
        )
        self.errors = Counter(
            f"{prefix}_errors",
            "Failures of the prediction log writer (each stops the writer), and appends it "
            "could not take (their records are left out; the log says why).",
            registry=self.registry,
        )
        self.dropped = Counter(
            f"{prefix}_dropped_records",
            "Records that could not be written, by kind (prediction or rejected): those being "
            "written or queued when the writer failed, and those appended after it failed or "
            "closed (a sidecar refuses requests once its log has failed, so these are the "
            "records of requests in flight then, and of the refusals).",
            ["kind"],
            registry=self.registry,
        )
        self.sampled_out = Counter(
            f"{prefix}_sampled_out_records",
            "Prediction records left out by --log-sample-rate.",
            registry=self.registry,
        )
        self.files_lost = Counter(
            f"{prefix}_files_lost",
            "Files being written that something else deleted or moved (a log shipper or a "
            "clean-up that took a file before the writer closed it); the writer starts a new "
            "file for the next records.",
            registry=self.registry,
        )
        self.deleted_files = Counter(
            f"{prefix}_deleted_files",
            "Files deleted because they were older than --log-retention.",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds",
            "Time appends waited for room in the writer's queue (appends that had room are not "
            "counted).",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.healthy = Gauge(
            f"{prefix}_healthy",
            "1 while the prediction log writer works, 0 once it has failed.",
            registry=self.registry,
        )
        self.healthy.set(1)
