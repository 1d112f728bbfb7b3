"""Typed settings of the inference sidecar (env prefix ``MODELPLANE_SIDECAR_``)."""

from __future__ import annotations

from pathlib import Path
from threading import TIMEOUT_MAX
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelplane.ids import ID_RULE, is_id
from modelplane.server.cpus import available_cores, process_budget
from modelplane.units import parse_duration
from sidecar.mps import Mps
from sidecar.predlog.settings import names_value

Device = Literal["auto", "cpu", "cuda"]


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _seconds(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value, bare_seconds=True)
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8001, 127.0.0.1:0)")
    return value


#: The batch size when ``--max-batch-size`` is not given and batching pays off.
DEFAULT_BATCH_ROWS = 32
#: The most ``--workers`` a sidecar runs: each is a process with a model session of its own
#: (``auto`` picks at most 8).
MAX_WORKERS = 64
#: The longest ``--max-queue-delay``: a batch wait is a latency every request may pay, and
#: dynamic batchers wait microseconds to milliseconds; a longer one is a typo for a shorter one.
MAX_QUEUE_DELAY = 1.0


class SidecarSettings(BaseSettings):
    """How one sidecar serves one ONNX model. Every field has a ``MODELPLANE_SIDECAR_`` env."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_SIDECAR_", extra="forbid")

    model: Path | None = Field(
        None,
        description="Path of the ONNX model file to serve (standalone mode; required there).",
    )
    listen: str = Field(
        "0.0.0.0:8001",
        description=(
            "HOST:PORT of the gRPC listener; port 0 picks a free port. Managed mode defaults "
            "to 0.0.0.0:0 so that several sidecars share a host; the ready line names the port."
        ),
    )
    control_plane: str | None = Field(
        None,
        description=(
            "HOST:PORT of the control plane: managed mode, serving the versions the "
            "deployment's desired state names (needs --deployment; --model is not used)."
        ),
    )
    deployment: str | None = Field(
        None,
        description="Managed mode: the deployment to follow, `NAME` or `deployments/NAME`.",
    )
    cache_dir: Path | None = Field(
        None,
        description=(
            "Managed mode: where verified artifacts are kept; default <log dir>/cache with a "
            "prediction log, else a temporary folder of this process."
        ),
    )
    replica: str = Field(
        "",
        description="Managed mode: this replica's name in reports; default host-pid-random.",
    )
    control_plane_token: str | None = Field(
        None, description="Managed mode: bearer token sent to the control plane."
    )
    control_plane_tls_ca: Path | None = Field(
        None, description="Managed mode: CA file to verify the control plane's TLS certificate."
    )
    control_plane_tls_cert: Path | None = Field(
        None,
        description=(
            "Managed mode: client certificate (PEM) for a control plane that requires mutual "
            "TLS; with --control-plane-tls-key."
        ),
    )
    control_plane_tls_key: Path | None = Field(
        None, description="Managed mode: the client certificate's private key (PEM)."
    )
    label_index_rows: int = Field(
        100_000,
        ge=0,
        description="Managed mode: recent prediction rows remembered for joining labels.",
    )
    shadow_queue: int = Field(
        256, ge=1, description="Managed mode: shadow requests queued before copies are dropped."
    )
    model_name: str = Field(
        "", description="Name clients use for the model; empty means the file name's stem."
    )
    model_version: str = Field(
        "1", description="Version label reported and accepted; it may not be empty."
    )
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
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "Most rows one session call runs when coalescing requests; 1 = no batching. "
            f"Unset: {DEFAULT_BATCH_ROWS} when warm-up shows a session call costing more than "
            "handing requests between threads does (or on a GPU), else 1."
        ),
    )
    max_queue_delay: float = Field(
        0.0,
        ge=0,
        description=(
            "How long (with a unit: 500us, 2ms; 0 for none, at most 1s) a batch waits for "
            "more rows before it runs; 0 runs whatever is queued at once."
        ),
    )
    max_queue_rows: int = Field(
        4096,
        ge=1,
        description=(
            "Rows waiting to run beyond which ModelInfer calls are shed (RESOURCE_EXHAUSTED, "
            "reason QUEUE_FULL): the rows in the batch queue (managed mode: the queues of "
            "every loaded version, shadow copies included), plus one for each call still "
            "waiting for a request thread, which is refused unread. Health checks, metadata "
            "and the admin service run on threads of their own and answer under overload."
        ),
    )
    max_request_rows: int = Field(
        65536, ge=1, description="Most rows one request may carry (BATCH_TOO_LARGE above)."
    )
    max_tensor_elements: int = Field(
        2**28, ge=1, description="Most elements one input tensor may declare."
    )
    max_bytes_elements: int = Field(
        2**20,
        ge=1,
        description=(
            "Most BYTES (string) elements one request may declare, over all its inputs "
            "(TENSOR_TOO_LARGE above). Each becomes a Python string and an ONNX Runtime one, "
            "about 100 bytes of memory whatever its length, so this bound is far below "
            "max_tensor_elements."
        ),
    )
    reject_non_finite: bool = Field(
        False, description="Refuse floating-point inputs holding NaN or infinity."
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per session; 0 chooses at warm-up between "
        "one thread and a pool of one per core (fewer when CPU affinity or a cgroup quota "
        "allow fewer), keeping one unless the pool is clearly faster for this model.",
    )
    intra_op_spinning: bool = Field(
        False,
        description=(
            "Let idle ONNX Runtime intra-op threads spin waiting for work: lower latency for "
            "compute-heavy models on otherwise idle cores, at the cost of CPU the transport "
            "needs."
        ),
    )
    workers: str = Field(
        "1",
        description=(
            f"Server processes sharing the port (SO_REUSEPORT): a number up to {MAX_WORKERS}, "
            "or auto (from the cores this process may use and the device)."
        ),
    )
    cuda_mps: Mps = Field(
        "auto",
        description=(
            "CUDA MPS for several workers on a GPU (sidecar.mps): auto uses the daemon "
            "CUDA_MPS_PIPE_DIRECTORY names or starts a private one when the driver's MPS tools "
            "are installed; on refuses to start without one; off never uses one."
        ),
    )
    observer_mode: Literal["process", "thread"] = Field(
        "process",
        description=(
            "Where the async prediction log and drift monitoring run "
            "(sidecar.observer_process): process = a child process of their own, off the "
            "serving process's GIL; thread = a thread of the serving process. A sync log "
            "always runs in the serving process."
        ),
    )
    handler_threads: int = Field(
        0,
        ge=0,
        description=(
            "Threads of the gRPC request pool (each handles one call at a time); 0 = auto: "
            "64 when requests wait (batching, sync logging), else twice the cores."
        ),
    )
    drain_seconds: float = Field(
        30.0,
        ge=0,
        le=TIMEOUT_MAX,  # the longest the server's stop can wait
        description=(
            "How long SIGTERM waits for in-flight requests before exiting (seconds, or with "
            "units: 30s, 1m30s)."
        ),
    )
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        le=TIMEOUT_MAX,
        description=(
            "On SIGTERM, how long health answers NOT_SERVING while requests are still served "
            "before the listener closes and the drain starts, so that load balancers and "
            "Kubernetes endpoints stop sending first (in Kubernetes: a few seconds, e.g. 5s)."
        ),
    )
    gc_young_threshold: int = Field(
        20000,
        ge=0,
        description=(
            "Allocations between collections of the youngest generation of Python's garbage "
            "collector in a serving process, which also freezes what start-up loaded out of "
            "later collections (0: Python's collector as it is, 700). Records held for the "
            "prediction log and drift live a few milliseconds: frequent young collections "
            "promote them, and the full collections that follow walk the whole heap."
        ),
    )
    warmup_runs: int = Field(3, ge=1, description="Session calls made during warm-up.")
    log_level: str = Field("info", description="Log level of the JSON logs on stderr.")
    # NoDecode: the env var takes the flag's A,B (pydantic-settings would try it as JSON).
    feature_names: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None,
        description=(
            "Names of the columns of the model's [-1, F] input, for the prediction log and "
            "drift, as A,B (a JSON list is read too); default: the baseline's feature names "
            "when it has F, else x_0..x_{F-1}."
        ),
    )
    baseline: Path | None = Field(
        None,
        description=(
            "Training data (Parquet, Arrow, CSV) or a baseline profile file to monitor drift "
            "against; no drift monitoring when unset."
        ),
    )
    baseline_label: str | None = Field(
        None, description="Column of the baseline dataset left out of the profile (the label)."
    )
    drift_window_rows: int | None = Field(
        None, ge=1, description="Rows per drift window (default 10000 unless --drift-window)."
    )
    drift_window: float | None = Field(
        None, gt=0, description="Seconds per drift window (units like 30s, 5m accepted)."
    )
    drift_psi: float | None = Field(0.2, description="PSI at or above which a feature drifted.")
    drift_ks_pvalue: float | None = Field(
        0.05, description="KS p-value below which a numeric feature drifted."
    )
    drift_chi2_pvalue: float | None = Field(
        0.05, description="Chi-square p-value below which a categorical feature drifted."
    )
    drift_js: float | None = Field(
        None, description="Jensen-Shannon distance at or above which a feature drifted."
    )
    drift_min_rows: int = Field(
        100,
        ge=0,
        description=(
            "Rows a drift window needs before PSI or Jensen-Shannon may flag a feature (over a "
            "few rows they read high for unchanged traffic; KS and chi-square judge any window)."
        ),
    )
    worker: bool = Field(
        False,
        description=(
            "Set by the supervisor of --workers N on its worker processes: bind with "
            "SO_REUSEPORT and record metrics for the supervisor's endpoint."
        ),
    )
    peers_dir: Path | None = Field(
        None,
        description=(
            "Set by the supervisor of a managed --workers N on its worker processes: the "
            "folder where each worker serves the others on <pid>.sock (labels join on every "
            "worker)."
        ),
    )

    _validate_delay = field_validator(
        "max_queue_delay", "shutdown_delay", "drift_window", mode="before"
    )(classmethod(lambda cls, v: _duration(v)))
    _validate_seconds = field_validator("drain_seconds", mode="before")(
        classmethod(lambda cls, v: _seconds(v))
    )

    @field_validator("max_queue_delay")
    @classmethod
    def _short_delay(cls, value: float) -> float:
        if value > MAX_QUEUE_DELAY:
            raise ValueError(
                f"{value:.9g}s is longer than the {MAX_QUEUE_DELAY:g}s allowed: every request "
                "may wait that long for a batch to fill (batchers wait 500us or 2ms)"
            )
        return value

    @field_validator("feature_names", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        return names_value(value) or None

    @field_validator("feature_names")
    @classmethod
    def _unique_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("feature names must be distinct")
        return value

    @field_validator("drift_psi", "drift_ks_pvalue", "drift_chi2_pvalue", "drift_js", mode="before")
    @classmethod
    def _threshold(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
            return None
        return value

    @property
    def drift_rows(self) -> int | None:
        """Rows per drift window (the default when neither size nor duration is set)."""
        if self.drift_window_rows is None and self.drift_window is None:
            return 10000
        return self.drift_window_rows

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("metrics_listen")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        return None if not value else _host_port(value)

    @field_validator("model_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        # Clients address a version by its label; an empty one reads as "any version" in
        # OIP, so a sidecar serving it could never be addressed by version.
        if not value.strip():
            raise ValueError(
                f"--model-version must be a version label such as 1, not {value!r} "
                "(MODELPLANE_SIDECAR_MODEL_VERSION too)"
            )
        return value

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value != "auto" and not (value.isdigit() and int(value) >= 1):
            raise ValueError(f"workers must be a positive number or auto, not {value!r}")
        if value != "auto" and int(value) > MAX_WORKERS:
            raise ValueError(
                f"workers must be at most {MAX_WORKERS} (each loads its own model session), "
                f"not {value}"
            )
        return value

    @model_validator(mode="after")
    def _mode(self) -> SidecarSettings:
        client_cert = (self.control_plane_tls_cert, self.control_plane_tls_key)
        if (client_cert[0] is None) != (client_cert[1] is None):
            raise ValueError(
                "--control-plane-tls-cert and --control-plane-tls-key go together (mutual TLS)"
            )
        if self.control_plane is None:
            if self.model is None:
                raise ValueError("give --model FILE.onnx, or --control-plane with --deployment")
            if client_cert[0] is not None:
                raise ValueError("--control-plane-tls-cert is for managed mode (--control-plane)")
            return self
        _host_port(self.control_plane)
        if not self.deployment:
            raise ValueError("--control-plane needs --deployment NAME")
        name = self.deployment.removeprefix("deployments/")
        if not is_id(name):
            raise ValueError(
                f"{self.deployment!r} is not a deployment name like fraud or deployments/fraud "
                f"(an id is {ID_RULE})"
            )
        if "listen" not in self.model_fields_set:
            self.listen = "0.0.0.0:0"
        return self

    @property
    def managed(self) -> bool:
        """Whether the control plane decides what is served (``--control-plane``)."""
        return self.control_plane is not None

    @property
    def deployment_id(self) -> str:
        """The deployment's id (``x`` of ``deployments/x``); the served model name."""
        return (self.deployment or "").removeprefix("deployments/")

    @property
    def served_name(self) -> str:
        """The model name clients address."""
        if self.managed:
            return self.deployment_id
        assert self.model is not None
        return self.model_name or self.model.stem

    @property
    def warmup_batch_rows(self) -> int:
        """The batch size warm-up prepares (the largest a session call may run)."""
        return self.max_batch_size or DEFAULT_BATCH_ROWS

    @property
    def may_batch(self) -> bool:
        """Whether requests may be coalesced (batching not switched off with 1 row)."""
        return self.max_batch_size != 1

    def request_threads(self, waits: bool, batching: bool) -> int:
        """Threads of the gRPC request pool; ``waits``: requests block on something other
        than the CPU (a sync log's fsync); ``batching``: requests are coalesced."""
        if self.handler_threads:
            return self.handler_threads
        if waits or batching:
            # A batch forms only from requests waiting in threads of their own.
            return 64
        budget = process_budget()
        if budget.affinity == 1:
            # Confined to one CPU, 8 threads carried 8-12% more than 4, logged or not
            # (bench/README.md, "One core per server").
            return 8
        # Handlers hold the GIL except inside ONNX Runtime: more threads than cores only
        # add contention (measured on 2 shared cores: 4 threads carry 1.5x the load of 64,
        # and 8-14% more than 8 to 32).
        return max(4, 2 * budget.cores)

    def worker_count(self, gpu_present: bool) -> int:
        """How many server processes to run; ``gpu_present``: this machine has a GPU, which
        ``--device cpu`` leaves unused (``auto`` is counted for the GPU: the count is set
        before warm-up measures which device serves the model)."""
        if self.workers != "auto":
            return int(self.workers)
        # The cores this process may use (affinity, cgroup quota), not the machine's.
        cores = available_cores()
        if gpu_present and self.device != "cpu":
            # One Python process cannot feed a GPU; several can, each with its own session.
            # Half the cores leaves the rest to gRPC's threads; on a 16-core H100 node the
            # heavy MLP gained from 6 to 10 workers (bench/README.md, "Sidecar on a GPU").
            return max(1, min(8, cores // 2))
        # On CPU, sessions compete with the transport for cores; small machines keep one.
        return 1 if cores <= 2 else max(1, min(8, cores // 4))
