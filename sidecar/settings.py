"""Typed settings of the inference sidecar (env prefix ``MODELPLANE_SIDECAR_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelplane.units import parse_duration

Device = Literal["auto", "cpu", "cuda"]


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8001, 127.0.0.1:0)")
    return value


class SidecarSettings(BaseSettings):
    """How one sidecar serves one ONNX model. Every field has a ``MODELPLANE_SIDECAR_`` env."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_SIDECAR_", extra="forbid")

    model: Path = Field(description="Path of the ONNX model file to serve.")
    listen: str = Field(
        "0.0.0.0:8001", description="HOST:PORT of the gRPC listener; port 0 picks a free port."
    )
    model_name: str = Field(
        "", description="Name clients use for the model; empty means the file name's stem."
    )
    model_version: str = Field("1", description="Version label reported and accepted.")
    metrics_listen: str | None = Field(
        None, description="HOST:PORT of the Prometheus endpoint; no endpoint when unset."
    )
    device: Device = Field(
        "auto",
        description=(
            "cpu, cuda (fail unless the CUDA provider runs the model), or auto (CUDA only when "
            "a GPU is present and warm-up measures the model faster there)."
        ),
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        description="Most rows one session call runs when coalescing requests; 1 = no batching.",
    )
    max_queue_delay: float = Field(
        0.0,
        ge=0,
        description=(
            "How long (seconds; units like 500us, 2ms accepted) a batch waits for more rows "
            "before it runs; 0 runs whatever is queued at once."
        ),
    )
    max_queue_rows: int = Field(
        4096, ge=1, description="Rows waiting in the batch queue beyond which requests are shed."
    )
    max_request_rows: int = Field(
        65536, ge=1, description="Most rows one request may carry (BATCH_TOO_LARGE above)."
    )
    max_tensor_elements: int = Field(
        2**28, ge=1, description="Most elements one input tensor may declare."
    )
    reject_non_finite: bool = Field(
        False, description="Refuse floating-point inputs holding NaN or infinity."
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per session; 0 lets it choose."
    )
    workers: str = Field(
        "1",
        description=(
            "Server processes sharing the port (SO_REUSEPORT): a number, or auto (from core "
            "count and device)."
        ),
    )
    handler_threads: int = Field(
        64, ge=1, description="Threads of the gRPC request pool (each handles one call at a time)."
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="How long SIGTERM waits for in-flight requests before exiting."
    )
    warmup_runs: int = Field(3, ge=1, description="Session calls made during warm-up.")
    log_level: str = Field("info", description="Log level of the JSON logs on stderr.")
    worker: bool = Field(
        False,
        description=(
            "Set by the supervisor of --workers N on its worker processes: bind with "
            "SO_REUSEPORT and record metrics for the supervisor's endpoint."
        ),
    )

    _validate_delay = field_validator("max_queue_delay", "drain_seconds", mode="before")(
        classmethod(lambda cls, v: _duration(v))
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("metrics_listen")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        return None if not value else _host_port(value)

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value != "auto" and not (value.isdigit() and int(value) >= 1):
            raise ValueError(f"workers must be a positive number or auto, not {value!r}")
        return value

    @property
    def served_name(self) -> str:
        """The model name clients address."""
        return self.model_name or self.model.stem

    def worker_count(self, gpu_present: bool) -> int:
        """How many server processes to run."""
        if self.workers != "auto":
            return int(self.workers)
        cores = os.cpu_count() or 1
        if gpu_present:
            # One Python process cannot feed a GPU; a few can, each with its own session.
            return max(1, min(4, cores // 2))
        # On CPU, sessions compete with the transport for cores; small machines keep one.
        return 1 if cores <= 2 else max(1, min(8, cores // 4))
