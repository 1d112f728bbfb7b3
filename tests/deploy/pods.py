"""Pods and AdmissionReviews as the API server sends them, for the webhook tests."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any


def model_pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A pod of the example ``fraud`` Deployment: labelled for injection by default."""
    meta: dict[str, Any] = {
        "generateName": "fraud-7d9f8c6b5-",
        "namespace": "ml-serving",
        "labels": {
            "app.kubernetes.io/name": "fraud",
            "modelplane.dev/inject": "true",
            "pod-template-hash": "7d9f8c6b5",
        }
        if labels is None
        else labels,
    }
    if annotations is not None:
        meta["annotations"] = annotations
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "api",
                "image": "registry.example.com/fraud-api:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
    }
    pod_spec.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    """An AdmissionReview v1 request for ``pod``."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": gvk,
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"].get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": copy.deepcopy(pod),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def body(doc: dict[str, Any]) -> bytes:
    """``doc`` as the JSON bytes the API server posts."""
    return json.dumps(doc).encode()
