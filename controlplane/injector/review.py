"""AdmissionReview v1 in, AdmissionReview v1 out.

:func:`answer_review` checks the review's shape (:class:`BadReview` with a reason when it is
not one the API server sends), lets :func:`decide` judge the pod, and wraps the decision:
``allowed`` with a base64 JSONPatch, or refused with a status the API server shows the user.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from controlplane.injector.mutate import InjectionConfig, decide

API_VERSION = "admission.k8s.io/v1"


class BadReview(ValueError):
    """The request body is not an AdmissionReview v1 the webhook can answer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_review(body: bytes) -> dict[str, Any]:
    """The ``request`` of an AdmissionReview v1 body; :class:`BadReview` otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON (JSONDecodeError), or an integer of more digits
        # than int() takes; RecursionError: arrays or objects nested too deep to read.
        raise BadReview(
            "MALFORMED_JSON", f"the body is not JSON the webhook can read: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise BadReview("NOT_ADMISSION_REVIEW", "the body must be a JSON object (AdmissionReview)")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise BadReview(
            "NOT_ADMISSION_REVIEW",
            f"expected apiVersion {API_VERSION} and kind AdmissionReview, got "
            f"{doc.get('apiVersion')!r} and {doc.get('kind')!r} (set admissionReviewVersions: "
            "[v1] in the webhook configuration)",
        )
    request = doc.get("request")
    if not isinstance(request, dict):
        raise BadReview("MISSING_REQUEST", "the AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("MISSING_UID", "the AdmissionReview request has no uid")
    return request


def _is_pod_create(request: dict[str, Any]) -> bool:
    kind = request.get("kind") or {}
    return (
        isinstance(kind, dict)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and request.get("operation") == "CREATE"
    )


def _check_pod(pod: dict[str, Any]) -> None:
    """BadReview (``MALFORMED_POD``) for a pod whose parts the webhook reads have the wrong
    JSON type; the API server never sends one, but a hand-made review must not crash us."""

    def objects(value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise BadReview("MALFORMED_POD", f"the pod's {where} must be a list of objects")
        return value

    def mapping(value: Any, where: str) -> None:
        if value is not None and not isinstance(value, dict):
            raise BadReview("MALFORMED_POD", f"the pod's {where} must be an object")

    def scalar(item: dict[str, Any], key: str, kind: type, where: str) -> None:
        value = item.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            noun = "an integer" if kind is int else "a string"
            raise BadReview("MALFORMED_POD", f"the pod's {where}.{key} must be {noun}")

    meta = pod.get("metadata", {})
    if not isinstance(meta, dict):
        raise BadReview("MALFORMED_POD", "the pod's metadata must be an object")
    for part in ("labels", "annotations"):
        mapping(meta.get(part), f"metadata.{part}")
    spec = pod["spec"]
    for part in ("containers", "initContainers"):
        for i, container in enumerate(objects(spec.get(part), f"spec.{part}")):
            scalar(container, "name", str, f"spec.{part}[{i}]")
            for j, port in enumerate(objects(container.get("ports"), f"spec.{part}[{i}].ports")):
                scalar(port, "name", str, f"spec.{part}[{i}].ports[{j}]")
                scalar(port, "containerPort", int, f"spec.{part}[{i}].ports[{j}]")
            objects(container.get("volumeMounts"), f"spec.{part}[{i}].volumeMounts")
    for i, volume in enumerate(objects(spec.get("volumes"), "spec.volumes")):
        scalar(volume, "name", str, f"spec.volumes[{i}]")
    objects(spec.get("tolerations"), "spec.tolerations")


def answer_review(body: bytes, config: InjectionConfig) -> dict[str, Any]:
    """The AdmissionReview answering ``body``; :class:`BadReview` when it is malformed."""
    request = parse_review(body)
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if _is_pod_create(request):
        pod = request.get("object")
        if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
            raise BadReview("MISSING_OBJECT", "a Pod CREATE review must carry the pod as object")
        _check_pod(pod)
        decision = decide(pod, config)
        response["allowed"] = decision.allowed
        if decision.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(decision.patch, separators=(",", ":")).encode()
            ).decode()
        if decision.warnings:
            response["warnings"] = decision.warnings
        if not decision.allowed:
            response["status"] = {
                "code": 422,
                "reason": "Invalid",
                "message": f"modelplane sidecar injection: {decision.message}",
            }
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
