"""Typed settings of the injection webhook (env prefix ``MODELPLANE_INJECTOR_``)."""

from __future__ import annotations

from pathlib import Path
from threading import TIMEOUT_MAX

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.injector.annotations import is_grpc_address, is_number

#: The control plane's Service in the base kustomization (``deploy/base``).
DEFAULT_CONTROL_PLANE = "modelplane-controlplane.modelplane.svc:50051"
DEFAULT_SIDECAR_IMAGE = "modelplane/sidecar:0.1.0"
DEFAULT_SIDECAR_GPU_IMAGE = "modelplane/sidecar-gpu:0.1.0"
#: The largest AdmissionReview body: etcd stores objects of at most 1.5 MiB (its default
#: --max-request-bytes), so no pod larger than that is ever created; the pod's JSON in the
#: review, with the review around it, stays under 2 MiB (a pod that big is nearly all
#: strings, annotations and env, whose JSON is as long as their stored form).
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
#: json.loads of a body made of tiny objects (``[{},{},...]``) takes up to about this many
#: times its size in memory (a 64-byte dict and an 8-byte pointer per 3 bytes of body).
PARSE_MEMORY_FACTOR = 26
#: Two of the largest bodies parsed at once: at most about 110 MB besides the process's own
#: 70 MB and the bodies being received (DEFAULT_MAX_RECEIVING_BYTES, and max_connections times
#: CONNECTION_MEMORY), within the 256Mi memory limit of deploy/base/injector/deployment.yaml
#: (whose MALLOC_ARENA_MAX=2 keeps glibc from holding freed memory in an arena per thread).
DEFAULT_MAX_PARSING_BYTES = 2 * DEFAULT_MAX_BODY_BYTES
#: Bodies of at most this many bytes (ordinary pods are a few KiB) are received without room
#: in max_receiving_bytes: max_connections bounds them.
SMALL_BODY_BYTES = 64 * 1024
#: The most a request's line and headers may take (http.server alone would take 100 headers of
#: 64 KiB each); the API server sends well under 1 KiB.
MAX_HEAD_BYTES = 64 * 1024
#: What one connection takes at most besides a body over SMALL_BODY_BYTES: its TLS buffers
#: and thread, and its head and small body twice over (copies while they are read and
#: decoded). Measured: about 60 KiB with neither, 260 KiB with 60 KiB of headers and a 64 KiB
#: body.
CONNECTION_MEMORY = 2 * (MAX_HEAD_BYTES + SMALL_BODY_BYTES) + 64 * 1024
#: Eight of the largest bodies received at once (and held until they are answered): with
#: max_connections' connections and the parsing budget, within the 256Mi memory limit.
DEFAULT_MAX_RECEIVING_BYTES = 8 * DEFAULT_MAX_BODY_BYTES


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not is_number(port) or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8443)")
    return value


class InjectorSettings(BaseSettings):
    """How the webhook listens and what sidecar it adds. Every field has a
    ``MODELPLANE_INJECTOR_`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_INJECTOR_", extra="forbid")

    listen: str = Field("0.0.0.0:8443", description="HTTPS HOST:PORT; port 0 picks a free one.")
    health_listen: str = Field(
        "0.0.0.0:8081",
        description="Plain-HTTP HOST:PORT answering only GET /healthz and GET /livez (the "
        "kubelet's probes), outside max_connections, so that connections held open on listen "
        "cannot fail the probes; port 0 picks a free one.",
    )
    tls_cert: Path = Field(description="PEM certificate chain served to the API server.")
    tls_key: Path = Field(description="PEM private key of tls_cert.")
    control_plane: str = Field(
        DEFAULT_CONTROL_PLANE,
        description="Control plane HOST:PORT given to sidecars whose pod does not name one "
        "with the modelplane.dev/control-plane annotation.",
    )
    sidecar_image: str = Field(DEFAULT_SIDECAR_IMAGE, description="Image of the CPU sidecar.")
    sidecar_gpu_image: str = Field(
        DEFAULT_SIDECAR_GPU_IMAGE,
        description="Image of the sidecar on pods asking for GPUs (modelplane.dev/gpu).",
    )
    native_sidecars: bool = Field(
        True,
        description="Add the sidecar as an init container with restartPolicy Always "
        "(Kubernetes 1.29+); off adds a regular container.",
    )
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest AdmissionReview body accepted (413 above it).",
    )
    max_parsing_bytes: int = Field(
        DEFAULT_MAX_PARSING_BYTES,
        ge=1024,
        description="How many body bytes the reviews parsed at once hold between them; a "
        "review past it waits up to parse_wait_seconds, then gets 503. Parsing JSON takes up "
        f"to about {PARSE_MEMORY_FACTOR} times the body's size in memory.",
    )
    parse_wait_seconds: float = Field(
        2.0,
        ge=0,
        le=TIMEOUT_MAX,
        description="How long a review waits for max_parsing_bytes to have room before it "
        "is answered 503 (the API server gives up after the webhook's timeoutSeconds).",
    )
    max_receiving_bytes: int = Field(
        DEFAULT_MAX_RECEIVING_BYTES,
        ge=1024,
        description="How many body bytes the reviews being received, parsed and answered hold "
        f"between them, each body over {SMALL_BODY_BYTES} bytes counted by its Content-Length "
        "before a byte of it is read; a review past it is answered 503 at once (the API server "
        "retries). Smaller bodies need no room: max_connections bounds them.",
    )
    max_connections: int = Field(
        64,
        ge=1,
        description="Connections served at once, a thread each. At the cap a new connection "
        "is admitted by closing the one idle longest (waiting for its next request); with none "
        "idle it waits in the listen backlog (in the kernel, costing the webhook nothing) "
        "until one closes: connections in their TLS handshake or in a request keep their slot "
        "until handshake_timeout_seconds or read_timeout_seconds.",
    )
    handshake_timeout_seconds: float = Field(
        3.0,
        gt=0,
        le=TIMEOUT_MAX,
        description="How long a TLS handshake may take before the connection is closed (one "
        "takes milliseconds): a connection that never starts TLS holds one of max_connections "
        "this long.",
    )
    read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=TIMEOUT_MAX,
        description="How long a request, from its first byte to the last byte of its body, "
        "may take before the connection is closed; one deadline, which bytes trickling in do "
        "not extend. At least the webhook's timeoutSeconds.",
    )
    shutdown_delay_seconds: float = Field(
        5.0,
        ge=0,
        le=TIMEOUT_MAX,
        description="On SIGTERM, how long /healthz answers 503 while reviews are still "
        "answered, before the listener closes: the Service's endpoints drop the pod (after "
        "failed readiness probes) before its port closes. 0 closes it at once.",
    )
    grace_seconds: float = Field(
        10.0,
        ge=0,
        le=TIMEOUT_MAX,
        description="After the shutdown delay, how long reviews in flight may take to be "
        "answered before the process exits.",
    )
    log_level: str = Field("info", description="Log level of the JSON logs on stderr.")

    @field_validator("native_sidecars", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("on", "off"):
            return value.strip().lower() == "on"
        return value

    @field_validator("listen", "health_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("control_plane")
    @classmethod
    def _check_control_plane(cls, value: str) -> str:
        if not is_grpc_address(value):
            raise ValueError(f"{value!r} is not HOST:PORT (e.g. modelplane-controlplane:50051)")
        return value

    @model_validator(mode="after")
    def _room_for_one_body(self) -> InjectorSettings:
        if self.max_parsing_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_parsing_bytes ({self.max_parsing_bytes}) is below max_body_bytes "
                f"({self.max_body_bytes}): the largest review could never be parsed"
            )
        if self.max_receiving_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_receiving_bytes ({self.max_receiving_bytes}) is below max_body_bytes "
                f"({self.max_body_bytes}): the largest review could never be received"
            )
        return self
