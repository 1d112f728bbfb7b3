"""The sidecar container and the volumes it brings, as plain Kubernetes JSON.

Shutdown: on SIGTERM the sidecar answers NOT_SERVING while still serving for its shutdown
delay (``--shutdown-delay``), so that the pod leaves the Service's endpoints before its port
closes, then drains the requests in flight (``--drain-seconds``). :func:`shutdown_timing`
fits both into the pod's ``terminationGracePeriodSeconds`` (30 s when unset):

- A regular sidecar container gets SIGTERM with the app containers: 10 s of delay (two
  failed readiness probes 5 s apart) and 15 s of drain.
- A native sidecar (an init container with ``restartPolicy: Always``) gets SIGTERM only after
  every app container has exited, long after the pod left the endpoints: its delay would
  serve no one, so it is 0, and it keeps the 15 s drain.
- Both take at most five sixths of the grace, the rest being a margin before the kubelet's
  SIGKILL (30 s: 25 s). A shorter grace shortens the delay and the drain in proportion,
  and the pod gets a warning saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
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
SHUTDOWN_DELAY_SECONDS = 10.0
DRAIN_SECONDS = 15.0
#: Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_GRACE_SECONDS = 30
#: The share of the pod's grace the sidecar's shutdown may take; the rest is a margin.
GRACE_SHARE = 5 / 6


@dataclass(frozen=True)
class ShutdownTiming:
    """The sidecar's shutdown delay and drain, in seconds; ``shortened`` when the pod's
    grace is too short for the usual ones."""

    delay: float
    drain: float
    shortened: bool = False


def shutdown_timing(grace: object, native: bool) -> ShutdownTiming:
    """The shutdown delay and drain of a sidecar in a pod whose
    ``terminationGracePeriodSeconds`` is ``grace`` (the default when not an integer)."""
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        grace = DEFAULT_GRACE_SECONDS
    delay = 0.0 if native else SHUTDOWN_DELAY_SECONDS
    room = grace * GRACE_SHARE
    if delay + DRAIN_SECONDS <= room:
        return ShutdownTiming(delay, DRAIN_SECONDS)
    share = room / (delay + DRAIN_SECONDS)
    # Whole milliseconds, rounded down: never past the room.
    return ShutdownTiming(
        int(delay * share * 1000) / 1000, int(DRAIN_SECONDS * share * 1000) / 1000, True
    )


def duration(seconds: float) -> str:
    """``seconds`` as the sidecar's options take it: ``10s``, ``1666ms``."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


#: Names of the sidecar's ports (port names should be unique within a pod).
PORT_NAMES = ("oip-grpc", "mp-metrics")


def sidecar_container(
    spec: SidecarSpec, image: str, native: bool, timing: ShutdownTiming | None = None
) -> dict[str, Any]:
    """The sidecar for ``spec``: an init container with ``restartPolicy: Always`` when
    ``native``, else a regular container (the caller decides where it goes). ``timing``
    defaults to that of a pod with the default grace."""
    timing = timing or shutdown_timing(DEFAULT_GRACE_SECONDS, native)
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
        # gone, then drain, within the pod's grace (the module's docstring).
        "--shutdown-delay",
        duration(timing.delay),
        "--drain-seconds",
        duration(timing.drain),
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
