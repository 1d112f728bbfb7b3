"""Deciding what happens to one pod: left alone, patched, or refused.

:func:`decide` is pure: a pod (as the API server sends it) in, a :class:`Decision` out. The
JSONPatch is built as plain RFC 6902 operations against the pod it was given.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.injector.annotations import (
    ANNOTATION_STATUS,
    METRICS_PORT,
    AnnotationError,
    SidecarSpec,
    deployment_name,
    is_labelled,
    read_spec,
    unknown_annotation_warnings,
)
from controlplane.injector.container import (
    CACHE_VOLUME,
    DRAIN_SECONDS,
    LOG_DIR,
    LOG_VOLUME,
    PORT_NAMES,
    SHUTDOWN_DELAY_SECONDS,
    SIDECAR_NAME,
    ShutdownTiming,
    gpu_toleration,
    shutdown_timing,
    sidecar_container,
    sidecar_volumes,
)
from controlplane.injector.patch import add_to_list, add_to_map


class InjectionConfig(Protocol):
    """What :func:`decide` needs of the settings."""

    control_plane: str
    sidecar_image: str
    sidecar_gpu_image: str
    native_sidecars: bool


@dataclass(frozen=True)
class Decision:
    """The answer for one pod: allowed or not, the patch (empty: unchanged), warnings for
    the person creating the pod, and the refusal message when not allowed."""

    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    reason: str = ""


def already_injected(pod: Mapping[str, Any]) -> bool:
    """Whether the pod holds the sidecar already (by container name or status annotation)."""
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("containers") or [])}
    names |= {c.get("name") for c in (spec.get("initContainers") or [])}
    annotations = pod.get("metadata", {}).get("annotations") or {}
    return SIDECAR_NAME in names or annotations.get(ANNOTATION_STATUS) == "injected"


def decide(pod: Mapping[str, Any], config: InjectionConfig) -> Decision:
    """Leave ``pod`` alone, patch it to add the sidecar, or refuse it (a bad annotation, no
    deployment for the sidecar to serve, or no containers to add the sidecar beside)."""
    if not is_labelled(pod) or already_injected(pod):
        return Decision(True)
    warnings = unknown_annotation_warnings(pod)
    try:
        spec = read_spec(pod, deployment_name(pod), config.control_plane)
        _check_ports(pod, spec)
    except AnnotationError as exc:
        return Decision(False, warnings=warnings, message=str(exc), reason="INVALID_ANNOTATION")
    except (ValueError, ArithmeticError, RecursionError) as exc:
        # A value no check above foresaw: refuse the pod with a message rather than fail
        # the review (the API server would show the user only "failed calling webhook").
        return Decision(
            False,
            warnings=warnings,
            message=f"the pod's modelplane.dev/* annotations could not be read: {exc!r}",
            reason="INVALID_ANNOTATION",
        )
    if not (pod.get("spec") or {}).get("containers"):
        return Decision(
            False,
            warnings=warnings,
            message="the pod has no containers (spec.containers) for the sidecar to serve",
            reason="MALFORMED_POD",
        )
    clash = _volume_clash(pod)
    if clash:
        return Decision(False, warnings=warnings, message=clash, reason="VOLUME_CLASH")
    pod_spec = pod.get("spec") or {}
    if pod_spec.get("hostNetwork") is True:
        warnings.append(
            f"hostNetwork: the modelplane sidecar listens on the node's ports {spec.port} and "
            f"{METRICS_PORT}; two such pods cannot share a node"
        )
    grace = pod_spec.get("terminationGracePeriodSeconds")
    timing = shutdown_timing(grace, config.native_sidecars)
    if timing.shortened:
        usual = (0.0 if config.native_sidecars else SHUTDOWN_DELAY_SECONDS) + DRAIN_SECONDS
        warnings.append(
            f"terminationGracePeriodSeconds {grace} is short for the modelplane sidecar's "
            f"{usual:g} s shutdown: its shutdown delay and drain are cut to {timing.delay:g} s "
            f"and {timing.drain:g} s; requests in flight may be cut off"
        )
    return Decision(True, patch=_patch(pod, spec, config, timing), warnings=warnings)


def _volume_clash(pod: Mapping[str, Any]) -> str:
    """Why the sidecar's volumes cannot go into the pod ("" when they can): a volume of the
    pod bears the name of one of the sidecar's but is no emptyDir (a configMap or a Secret
    would be mounted, read-only, as the sidecar's log or cache directory), or an app
    container mounts another volume at the log directory (it would not see the sidecar's
    prediction logs). A pod emptyDir of the sidecar's volume name is shared."""
    pod_spec = pod.get("spec") or {}
    for volume in pod_spec.get("volumes") or []:
        name = volume.get("name")
        if name in (LOG_VOLUME, CACHE_VOLUME) and "emptyDir" not in volume:
            kind = next((k for k in volume if k != "name"), "unknown")
            return (
                f"the pod has a volume named {name!r} ({kind}), the name of the sidecar's "
                f"{'log' if name == LOG_VOLUME else 'cache'} volume, which must be an "
                "emptyDir; rename the pod's volume"
            )
    for app in pod_spec.get("containers") or []:
        for mount in app.get("volumeMounts") or []:
            if _same_dir(mount.get("mountPath"), LOG_DIR) and mount.get("name") != LOG_VOLUME:
                return (
                    f"container {app.get('name')!r} mounts the volume {mount.get('name')!r} "
                    f"at {LOG_DIR}, where the sidecar's prediction logs (volume "
                    f"{LOG_VOLUME!r}) go; mount it elsewhere"
                )
    return ""


def _check_ports(pod: Mapping[str, Any], spec: SidecarSpec) -> None:
    """AnnotationError when a container running beside the sidecar has its port or port name.

    An init container without ``restartPolicy: Always`` has finished before the sidecar
    starts (the sidecar comes after it in either mode), so it may use the same ports."""
    ours = {spec.port, METRICS_PORT}
    pod_spec = pod.get("spec") or {}
    beside = [
        *(pod_spec.get("containers") or []),
        *(c for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"),
    ]
    for container in beside:
        for port in container.get("ports") or []:
            if port.get("name") in PORT_NAMES:
                raise AnnotationError(
                    "modelplane.dev/port",
                    f"container {container.get('name')!r} uses the port name "
                    f"{port.get('name')!r}, which the sidecar's port has; rename it",
                )
            # Kubernetes keys ports by number and protocol: a UDP port of the same number is
            # no clash with the sidecar's TCP ones.
            tcp = str(port.get("protocol") or "TCP").upper() == "TCP"
            if tcp and port.get("containerPort") in ours:
                raise AnnotationError(
                    "modelplane.dev/port",
                    f"container {container.get('name')!r} already uses port "
                    f"{port.get('containerPort')}, which the sidecar needs; set another "
                    f"sidecar port (the metrics port {METRICS_PORT} is fixed)",
                )


def _same_dir(path: Any, directory: str) -> bool:
    """Whether a mount path names ``directory`` (``/var/log/modelplane/`` does)."""
    return isinstance(path, str) and bool(path) and posixpath.normpath(path) == directory


def _patch(
    pod: Mapping[str, Any], spec: SidecarSpec, config: InjectionConfig, timing: ShutdownTiming
) -> list[dict[str, Any]]:
    pod_spec = pod.get("spec") or {}

    def has(key: str) -> bool:
        return pod_spec.get(key) is not None

    native = config.native_sidecars
    image = config.sidecar_gpu_image if spec.gpus else config.sidecar_image
    container = sidecar_container(spec, image, native, timing)
    ops: list[dict[str, Any]] = []
    # The pod's own containers read the prediction logs from the shared volume.
    for index, app in enumerate(pod_spec.get("containers") or []):
        mounts = app.get("volumeMounts")
        if any(
            _same_dir(m.get("mountPath"), LOG_DIR) or m.get("name") == LOG_VOLUME
            for m in mounts or []
        ):
            continue
        mount = {"name": LOG_VOLUME, "mountPath": LOG_DIR, "readOnly": True}
        ops += add_to_list(f"/spec/containers/{index}/volumeMounts", mounts is not None, [mount])
    if native:
        ops += add_to_list("/spec/initContainers", has("initContainers"), [container])
    else:
        ops += add_to_list("/spec/containers", True, [container])
    present = {v.get("name") for v in pod_spec.get("volumes") or []}
    volumes = [v for v in sidecar_volumes() if v["name"] not in present]
    ops += add_to_list("/spec/volumes", has("volumes"), volumes)
    if spec.gpus:
        toleration = gpu_toleration()
        if toleration not in (pod_spec.get("tolerations") or []):
            ops += add_to_list("/spec/tolerations", has("tolerations"), [toleration])
    annotations = (pod.get("metadata") or {}).get("annotations")
    ops += add_to_map(
        "/metadata/annotations", annotations is not None, {ANNOTATION_STATUS: "injected"}
    )
    return ops
