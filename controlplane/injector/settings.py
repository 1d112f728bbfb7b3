"""Typed settings of the injection webhook (env prefix ``MODELPLANE_INJECTOR_``)."""

from __future__ import annotations

from pathlib import Path
from threading import TIMEOUT_MAX

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.injector.annotations import is_grpc_address, is_number

#: The control plane's Service in the base kustomization (``deploy/base``).
DEFAULT_CONTROL_PLANE = "modelplane-controlplane.modelplane.svc:50051"
DEFAULT_SIDECAR_IMAGE = "modelplane/sidecar:0.1.0"
DEFAULT_SIDECAR_GPU_IMAGE = "modelplane/sidecar-gpu:0.1.0"


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
        4 * 1024 * 1024, ge=1024, description="Largest AdmissionReview body accepted."
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

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("control_plane")
    @classmethod
    def _check_control_plane(cls, value: str) -> str:
        if not is_grpc_address(value):
            raise ValueError(f"{value!r} is not HOST:PORT (e.g. modelplane-controlplane:50051)")
        return value
