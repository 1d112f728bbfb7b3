"""The sidecar container and the volumes it brings, as plain Kubernetes JSON."""

from __future__ import annotations

from typing import Any

from controlplane.injector.annotations import GPU_RESOURCE, METRICS_PORT, SidecarSpec

SIDECAR_NAME = "modelplane-sidecar"
LOG_VOLUME = "modelplane-logs"
CACHE_VOLUME = "modelplane-cache"
LOG_DIR = "/var/log/modelplane"
CACHE_DIR = "/var/cache/modelplane"
#: Optional Secret (in the pod's namespace) whose ``token`` key the sidecar sends to an
#: access-controlled control plane (``MODELPLANE_SIDECAR_CONTROL_PLANE_TOKEN``).
TOKEN_SECRET = "modelplane-sidecar-token"
#: What SIGTERM gives the sidecar: NOT_SERVING while still serving, then the drain.
SHUTDOWN_DELAY = "10s"
DRAIN = "15s"
#: Names of the sidecar's ports (port names should be unique within a pod).
PORT_NAMES = ("oip-grpc", "mp-metrics")


def sidecar_container(spec: SidecarSpec, image: str, native: bool) -> dict[str, Any]:
    """The sidecar for ``spec``: an init container with ``restartPolicy: Always`` when
    ``native``, else a regular container (the caller decides where it goes)."""
    args = [
        "sidecar",
        "serve",
        "--control-plane",
        spec.control_plane,
        "--deployment",
        spec.deployment,
        "--cache-dir",
        CACHE_DIR,
        "--listen",
        f"0.0.0.0:{spec.port}",
        "--metrics-listen",
        f"0.0.0.0:{METRICS_PORT}",
        "--log-dir",
        f"{LOG_DIR}/predictions",
        # On SIGTERM, answer NOT_SERVING while still serving until the pod's endpoints are
        # gone (the readiness probe needs two failures 5 s apart), then drain within the
        # pod's default 30 s grace.
        "--shutdown-delay",
        SHUTDOWN_DELAY,
        "--drain-seconds",
        DRAIN,
    ]
    if spec.gpus:
        args += ["--device", "cuda"]
    grpc_probe = {"port": spec.port}
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["modelplane"],
        "args": args,
        "env": [
            {
                "name": "MODELPLANE_SIDECAR_CONTROL_PLANE_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": TOKEN_SECRET, "key": "token", "optional": True}
                },
            },
            # The replica's name in the control plane's reports: the pod's.
            {
                "name": "MODELPLANE_SIDECAR_REPLICA",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            # Numba's compiled-function cache, where the non-root user may write.
            {"name": "NUMBA_CACHE_DIR", "value": f"{CACHE_DIR}/numba"},
        ],
        "ports": [
            {"name": PORT_NAMES[0], "containerPort": spec.port, "protocol": "TCP"},
            {"name": PORT_NAMES[1], "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {part: dict(items) for part, items in spec.resources.items()},
        # The model is fetched from the control plane and warmed up before the sidecar
        # reports SERVING: give that up to five minutes before liveness counts.
        "startupProbe": {"grpc": grpc_probe, "periodSeconds": 5, "failureThreshold": 60},
        "livenessProbe": {"grpc": grpc_probe, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"grpc": grpc_probe, "periodSeconds": 5, "failureThreshold": 2},
        "volumeMounts": [
            {"name": LOG_VOLUME, "mountPath": LOG_DIR},
            {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
        ],
        # What the "restricted" Pod Security Standard asks of every container; seccomp is
        # set here too, as the pod's own securityContext may not set it.
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if native:
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes() -> list[dict[str, Any]]:
    """The emptyDir volumes the sidecar mounts: prediction logs (shared with the pod's
    containers) and the model cache."""
    return [
        {"name": LOG_VOLUME, "emptyDir": {}},
        {"name": CACHE_VOLUME, "emptyDir": {}},
    ]


def gpu_toleration() -> dict[str, Any]:
    """Lets a GPU pod onto nodes tainted ``nvidia.com/gpu`` (as GPU node pools usually are)."""
    return {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
