"""The sidecar-injection webhook: a Kubernetes mutating admission webhook over HTTPS.

Pods labelled ``modelplane.dev/inject: "true"`` get the Modelplane sidecar added by a JSONPatch
in the AdmissionReview answer; every other pod is allowed unchanged. ``modelplane injector
serve`` runs it. Only the standard library is needed besides pydantic-settings.
"""

from controlplane.injector.annotations import (
    ANNOTATION_CONTROL_PLANE,
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_GPU,
    ANNOTATION_PORT,
    ANNOTATION_RESOURCES,
    ANNOTATION_STATUS,
    INJECT_LABEL,
    AnnotationError,
    SidecarSpec,
)
from controlplane.injector.container import SIDECAR_NAME
from controlplane.injector.mutate import Decision, decide
from controlplane.injector.review import BadReview, answer_review
from controlplane.injector.server import InjectorHandle, start
from controlplane.injector.settings import InjectorSettings

__all__ = [
    "ANNOTATION_CONTROL_PLANE",
    "ANNOTATION_DEPLOYMENT",
    "ANNOTATION_GPU",
    "ANNOTATION_PORT",
    "ANNOTATION_RESOURCES",
    "ANNOTATION_STATUS",
    "INJECT_LABEL",
    "SIDECAR_NAME",
    "AnnotationError",
    "BadReview",
    "Decision",
    "InjectorHandle",
    "InjectorSettings",
    "SidecarSpec",
    "answer_review",
    "decide",
    "start",
]
