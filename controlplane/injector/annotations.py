"""Reading a pod's ``modelplane.dev/*`` label and annotations into a :class:`SidecarSpec`.

A labelled pod with no annotations works on the defaults: the deployment is named by its
``app.kubernetes.io/name`` label, else its ``app`` label (the first that is a deployment id),
and the control plane comes from the webhook's ``--control-plane``. A value that is present
but wrong raises :class:`AnnotationError`, whose message names the annotation and the form it
takes; so does a pod with no deployment id at all.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

INJECT_LABEL = "modelplane.dev/inject"
ANNOTATION_DEPLOYMENT = "modelplane.dev/deployment"
ANNOTATION_CONTROL_PLANE = "modelplane.dev/control-plane"
ANNOTATION_PORT = "modelplane.dev/port"
ANNOTATION_RESOURCES = "modelplane.dev/resources"
ANNOTATION_GPU = "modelplane.dev/gpu"
#: Set on every pod the webhook patched, so that people (and the webhook) can tell.
ANNOTATION_STATUS = "modelplane.dev/status"
PREFIX = "modelplane.dev/"
#: Every annotation the webhook reads or writes; others under PREFIX get a warning.
KNOWN_ANNOTATIONS = (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_CONTROL_PLANE,
    ANNOTATION_PORT,
    ANNOTATION_RESOURCES,
    ANNOTATION_GPU,
    ANNOTATION_STATUS,
)

DEFAULT_PORT = 8001
METRICS_PORT = 9465
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}

# A Kubernetes resource.Quantity: a decimal number with an optional binary (Ki..Ei),
# decimal (n, u, m, k, M..E) or exponent suffix. "1E" is exa and "1Ei" exbi: only an e or E
# followed by digits ("1E3", "5e-3") is an exponent.
# Digits are ASCII: Python's \d and str.isdigit() also take ², ٣ and the like, which
# Kubernetes does not.
_QUANTITY = re.compile(
    r"^[+]?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?$"
)
#: Largest exponent (``e`` form) a quantity may have either way: the suffixes span 1e-9 to
#: 1e18, and Kubernetes caps every quantity below 2**63.
MAX_QUANTITY_EXPONENT = 18
_DIGITS = re.compile(r"[0-9]+")
# A host a gRPC target names: dot-separated DNS labels (an IPv4 address is one too).
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# What each suffix of a quantity multiplies its number by.
_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{
        s: Decimal(10) ** e
        for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
    "": Decimal(1),
}
# A deployment id: an RFC 1034 label (a lowercase letter, then letters, digits and dashes).
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME_FORM = "a lowercase letter, then lowercase letters, digits and dashes, at most 63 characters"
#: The pod labels that name its deployment when the annotation does not, in order.
NAME_LABELS = ("app.kubernetes.io/name", "app")
_RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


class AnnotationError(ValueError):
    """A ``modelplane.dev/*`` annotation holds a value the webhook cannot use."""

    def __init__(self, annotation: str, message: str) -> None:
        super().__init__(f"annotation {annotation}: {message}")
        self.annotation = annotation


@dataclass(frozen=True)
class SidecarSpec:
    """What sidecar one pod gets."""

    deployment: str
    control_plane: str
    port: int = DEFAULT_PORT
    resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RESOURCES.items()}
    )
    gpus: int = 0


def is_labelled(pod: Mapping[str, Any]) -> bool:
    """Whether the pod asks for injection (label ``modelplane.dev/inject: "true"``, exactly
    what the webhook configuration's objectSelector matches: pods labelled ``True`` never
    reach the webhook, so it does not take them either)."""
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(INJECT_LABEL) == "true"


def deployment_name(pod: Mapping[str, Any]) -> str:
    """The deployment the sidecar serves: the annotation, else the pod's
    ``app.kubernetes.io/name`` label, else its ``app`` label, whichever first is a deployment
    id. :class:`AnnotationError` when the annotation is no deployment id, or when there is
    none and neither label is one: a pod that asks for the sidecar is not created without it.
    """
    meta = pod.get("metadata", {})
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if ANNOTATION_DEPLOYMENT in annotations:
        # NAME or deployments/NAME, as `modelplane sidecar serve --deployment` takes it.
        name = str(annotations[ANNOTATION_DEPLOYMENT]).strip().removeprefix("deployments/")
        if not _NAME.match(name):
            raise AnnotationError(
                ANNOTATION_DEPLOYMENT, f"{name!r} is not a deployment id ({_NAME_FORM})"
            )
        return name
    # A label may hold what no deployment id can (Fraud_API, fraud.v2): the next one is tried.
    unusable = []
    for label in NAME_LABELS:
        value = str(labels.get(label, "")).strip()
        if _NAME.match(value):
            return value
        if value:
            unusable.append(f"{label}={value!r}")
    why = (
        f"no deployment id in the label{'s' if len(unusable) > 1 else ''} {' or '.join(unusable)}"
        if unusable
        else f"no {' or '.join(NAME_LABELS)} label"
    )
    raise AnnotationError(
        ANNOTATION_DEPLOYMENT,
        f"not set and {why}; set the annotation (or the {NAME_LABELS[0]} label) to the "
        f"deployment id the sidecar serves ({_NAME_FORM})",
    )


def read_spec(pod: Mapping[str, Any], deployment: str, default_control_plane: str) -> SidecarSpec:
    """The pod's :class:`SidecarSpec` for ``deployment``; :class:`AnnotationError` on a bad
    annotation."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    control_plane = str(annotations.get(ANNOTATION_CONTROL_PLANE, default_control_plane)).strip()
    _check_address(control_plane)
    port = _port(annotations.get(ANNOTATION_PORT))
    gpus = _gpus(annotations.get(ANNOTATION_GPU))
    resources = _resources(annotations.get(ANNOTATION_RESOURCES))
    _check_requests_within_limits(resources)
    if gpus:
        for part in ("requests", "limits"):
            resources.setdefault(part, {})[GPU_RESOURCE] = str(gpus)
    return SidecarSpec(deployment, control_plane, port, resources, gpus)


def is_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (``str.isdigit`` also takes ``²`` and ``٣``, which
    ``int`` refuses or reads otherwise)."""
    return _DIGITS.fullmatch(text) is not None


def is_number(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (at most 18 of them, so that ``int`` takes it)."""
    return len(text) <= 18 and is_digits(text)


def is_grpc_address(value: str) -> bool:
    """Whether ``value`` is ``HOST:PORT`` as a gRPC client dials it: a DNS name or IPv4
    address (or ``[IPv6]``) and a port from 1 to 65535; no scheme, path or spaces."""
    host, sep, port = value.rpartition(":")
    if not sep or not is_number(port) or not 0 < int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return bool(_HOST.match(host))


def _check_address(value: str) -> None:
    if not is_grpc_address(value):
        raise AnnotationError(
            ANNOTATION_CONTROL_PLANE,
            f"{value!r} is not HOST:PORT (e.g. modelplane-controlplane.modelplane.svc:50051)",
        )


def _port(value: object) -> int:
    if value is None:
        return DEFAULT_PORT
    text = str(value).strip()
    if not is_number(text) or not 0 < int(text) <= 65535:
        raise AnnotationError(ANNOTATION_PORT, f"{text!r} is not a port number (1-65535)")
    if int(text) == METRICS_PORT:
        raise AnnotationError(
            ANNOTATION_PORT, f"{METRICS_PORT} is the sidecar's metrics port; choose another"
        )
    return int(text)


def _gpus(value: object) -> int:
    if value is None:
        return 0
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return 1 if text == "true" else 0
    if not is_number(text) or int(text) > 64:
        raise AnnotationError(
            ANNOTATION_GPU, f"{text!r} is not a GPU count (0-64, or true for one GPU)"
        )
    return int(text)


def _resources(value: object) -> dict[str, dict[str, str]]:
    """``cpu=500m,memory=1Gi`` (requests; the memory limit follows the request; resources
    not named keep their defaults), or JSON ``{"requests": {...}, "limits": {...}}`` (as
    written: no defaults)."""
    if value is None:
        return {part: dict(items) for part, items in DEFAULT_RESOURCES.items()}
    text = str(value).strip()
    form = 'use cpu=500m,memory=1Gi or {"requests": {...}, "limits": {...}}'
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise AnnotationError(ANNOTATION_RESOURCES, f"not valid JSON; {form}") from None
        except RecursionError:
            raise AnnotationError(
                ANNOTATION_RESOURCES, f"not valid JSON: arrays or objects nested too deep; {form}"
            ) from None
        if not isinstance(doc, dict) or not doc or set(doc) - {"requests", "limits"}:
            raise AnnotationError(ANNOTATION_RESOURCES, f"only requests and limits; {form}")
        out: dict[str, dict[str, str]] = {}
        for part, items in doc.items():
            if not isinstance(items, dict):
                raise AnnotationError(ANNOTATION_RESOURCES, f"{part} must be a mapping; {form}")
            out[part] = {str(k): _quantity(str(k), v) for k, v in items.items()}
        return out
    requests: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, amount = item.partition("=")
        if not sep:
            raise AnnotationError(ANNOTATION_RESOURCES, f"{item!r} is not NAME=QUANTITY; {form}")
        requests[key.strip()] = _quantity(key.strip(), amount.strip())
    if not requests:
        raise AnnotationError(ANNOTATION_RESOURCES, f"empty; {form}")
    out = {part: dict(items) for part, items in DEFAULT_RESOURCES.items()}
    out["requests"].update(requests)
    if "memory" in requests:
        out["limits"]["memory"] = requests["memory"]
    return out


def _quantity(name: str, amount: object) -> str:
    if name not in _RESOURCE_NAMES:
        raise AnnotationError(
            ANNOTATION_RESOURCES,
            f"unknown resource {name!r} (one of {', '.join(_RESOURCE_NAMES)}; GPUs go in "
            f"{ANNOTATION_GPU})",
        )
    text = str(amount).strip()
    match = _QUANTITY.match(text)
    if isinstance(amount, bool) or match is None:
        raise AnnotationError(
            ANNOTATION_RESOURCES, f"{name}={text!r} is not a quantity (e.g. 500m, 2, 1Gi)"
        )
    if not _exponent_in_range(match.group("exponent")):
        raise AnnotationError(
            ANNOTATION_RESOURCES,
            f"{name}={text!r} has an exponent beyond e{MAX_QUANTITY_EXPONENT} or "
            f"e-{MAX_QUANTITY_EXPONENT} (e.g. 500m, 2, 1Gi)",
        )
    return text


def _exponent_in_range(exponent: str | None) -> bool:
    """Whether the digits of an ``e`` form (``3`` of ``e3``, ``-6`` of ``E-6``) are within
    :data:`MAX_QUANTITY_EXPONENT` either way; true when there is none."""
    if exponent is None:
        return True
    digits = exponent.lstrip("+-").lstrip("0")
    return len(digits) <= 2 and int(digits or "0") <= MAX_QUANTITY_EXPONENT


def quantity_value(text: str) -> Decimal:
    """The amount a Kubernetes quantity stands for: ``500m`` is 0.5, ``1Gi`` 1073741824,
    ``1G`` 10**9, ``1Ei`` 2**60, ``1E`` 10**18, ``2e3`` 2000; ValueError when ``text`` is not
    a quantity, or its exponent is out of range."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a quantity")
    number, exponent = Decimal(match.group("number")), match.group("exponent")
    if not _exponent_in_range(exponent):
        raise ValueError(f"{text!r} has an exponent beyond e{MAX_QUANTITY_EXPONENT}")
    if exponent is not None:
        return number.scaleb(int(exponent))
    return number * _SUFFIXES[match.group("suffix") or ""]


def _check_requests_within_limits(resources: Mapping[str, Mapping[str, str]]) -> None:
    """A container whose request is above its limit is invalid: the API server would refuse
    the pod with a message about the sidecar the user never wrote."""
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for name, request in requests.items():
        limit = limits.get(name)
        if limit is not None and quantity_value(request) > quantity_value(limit):
            raise AnnotationError(
                ANNOTATION_RESOURCES,
                f"requests {name}={request} is above limits {name}={limit}; "
                "a request may not exceed its limit",
            )


def unknown_annotation_warnings(pod: Mapping[str, Any]) -> list[str]:
    """A warning for each annotation under ``modelplane.dev/`` the webhook does not know (a
    misspelt one is otherwise ignored), naming the closest known one."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    warnings = []
    # Compared without the prefix, which every key shares.
    names = [known.removeprefix(PREFIX) for known in KNOWN_ANNOTATIONS]
    for key in sorted(str(k) for k in annotations):
        if not key.startswith(PREFIX) or key in KNOWN_ANNOTATIONS:
            continue
        close = difflib.get_close_matches(key.removeprefix(PREFIX), names, n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        warnings.append(f"annotation {key} is not one modelplane reads and is ignored{hint}")
    return warnings
