"""The kustomize base and overlays render offline, validate strictly for Kubernetes 1.29 and
1.33, and hold what running the control plane on Kubernetes needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    CRD_GROUPS,
    DEPLOY,
    find,
    is_builtin,
    load_yaml,
    validate_strict,
)

KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))


def test_every_kustomization_renders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert set(rendered) == {"base", "overlays/dev", "overlays/production"}
    for name, resources in rendered.items():
        assert resources, f"{name} rendered nothing"


def test_rendered_resources_validate_strictly(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for resources in rendered.values():
        for resource in resources:
            if is_builtin(resource):
                validate_strict(resource)
            else:
                assert resource["apiVersion"].split("/")[0] in CRD_GROUPS, resource["kind"]


def test_base_files_validate_strictly_one_by_one() -> None:
    files = [p for p in (DEPLOY / "base").rglob("*.yaml") if p.name != "kustomization.yaml"]
    assert files
    for path in files:
        for resource in load_yaml(path):
            if is_builtin(resource):
                validate_strict(resource)


def test_example_manifests_validate_strictly() -> None:
    kinds = set()
    for path in sorted((DEPLOY / "examples").glob("*.yaml")):
        for resource in load_yaml(path):
            assert is_builtin(resource), path
            validate_strict(resource)
            kinds.add(resource["kind"])
    assert {"Deployment", "HorizontalPodAutoscaler", "Namespace", "ConfigMap"} <= kinds


def test_partial_patches_live_in_files_named_patch() -> None:
    """A strategic-merge patch is not a whole resource, so it must not pass for one: every
    file a kustomization patches with has "patch" in its name, and no such file is a
    resource."""
    for kustomization in KUSTOMIZATIONS:
        doc = yaml.safe_load(kustomization.read_text())
        for patch in doc.get("patches", []) + doc.get("patchesStrategicMerge", []):
            path = patch["path"] if isinstance(patch, dict) else patch
            assert "patch" in Path(path).name, f"{kustomization}: {path}"
            assert (kustomization.parent / path).exists()
        for resource in doc.get("resources", []):
            assert "patch" not in Path(resource).name, f"{kustomization}: {resource}"
    for path in DEPLOY.rglob("*patch*.yaml"):
        referenced = any(
            path.name in (k.read_text()) and k.parent == path.parent for k in KUSTOMIZATIONS
        )
        assert referenced, f"{path} is not used by the kustomization beside it"


def _container(resources: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    pod = find(resources, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def test_control_plane_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = rendered["base"]
    deployment = find(base, "Deployment", "modelplane-controlplane")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelplane-controlplane"
    container = _container(base, "modelplane-controlplane")
    assert container["command"] + container["args"] == ["modelplane", "controlplane", "serve"]
    assert container["image"] == "modelplane/controlplane:0.1.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}, probe
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    # The database URL comes from a Secret, everything else from the ConfigMap.
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELPLANE_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelplane-db",
        "key": "url",
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "modelplane-controlplane"}}]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"modelplane-auth", "modelplane-signing-key"}
    config = find(base, "ConfigMap", "modelplane-controlplane")["data"]
    assert config["MODELPLANE_AUTH"] == "tokens:/etc/modelplane/auth/tokens.yaml"
    assert config["MODELPLANE_SIGNING_KEY"].startswith("/etc/modelplane/signing/")
    assert config["MODELPLANE_LISTEN"] == "0.0.0.0:50051"
    assert config["MODELPLANE_METRICS_LISTEN"] == "0.0.0.0:9464"
    # SIGTERM: NOT_SERVING while still serving, long enough for the readiness probe to take
    # the pod out of the endpoints; then the grace; all before the kubelet's SIGKILL.
    delay = float(config["MODELPLANE_SHUTDOWN_DELAY_SECONDS"])
    probe = container["readinessProbe"]
    assert delay >= probe["periodSeconds"] * probe["failureThreshold"]
    grace = float(config["MODELPLANE_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > delay + grace


@pytest.mark.parametrize("variant", ["base", "overlays/dev", "overlays/production"])
def test_configmap_settings_are_real_settings(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    from controlplane.injector import InjectorSettings
    from controlplane.settings import ControlPlaneSettings

    required = {"tls_cert": "/tls.crt", "tls_key": "/tls.key"}
    for name, cls, extra in (
        ("modelplane-controlplane", ControlPlaneSettings, {}),
        ("modelplane-injector", InjectorSettings, required),
    ):
        data = find(rendered[variant], "ConfigMap", name)["data"]
        prefix = cls.model_config["env_prefix"]
        values: dict[str, Any] = dict(extra)
        for key, value in data.items():
            assert key.startswith(prefix), key
            field = key[len(prefix) :].lower()
            assert field in cls.model_fields, f"{key} is no setting"
            values[field] = value
        cls(**values)  # the values parse as the settings' types


def test_service_pdb_and_no_api_access(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = rendered["base"]
    service = find(base, "Service", "modelplane-controlplane")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }
    labels = find(base, "Deployment", "modelplane-controlplane")["spec"]["selector"]
    assert service["spec"]["selector"] == labels["matchLabels"]
    pdb = find(base, "PodDisruptionBudget", "modelplane-controlplane")
    assert pdb["spec"]["selector"] == labels and pdb["spec"]["minAvailable"] == 1
    # Neither server calls the Kubernetes API: no role grants their accounts anything, and
    # their tokens stay unmounted.
    for variant, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}, variant
    for name in ("modelplane-controlplane", "modelplane-injector"):
        assert find(base, "ServiceAccount", name)["automountServiceAccountToken"] is False
    assert (
        find(rendered["overlays/production"], "PodDisruptionBudget", "modelplane-controlplane")[
            "spec"
        ]["minAvailable"]
        == 2
    )


def test_mutating_webhook_configuration(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config = find(rendered["base"], "MutatingWebhookConfiguration", "modelplane-sidecar-injector")
    (hook,) = config["webhooks"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["namespaceSelector"] == {"matchLabels": {"modelplane.dev/injection": "enabled"}}
    assert hook["objectSelector"] == {"matchLabels": {"modelplane.dev/inject": "true"}}
    assert hook["clientConfig"]["service"] == {
        "name": "modelplane-injector",
        "namespace": "modelplane",
        "path": "/inject",
        "port": 443,
    }
    assert hook["rules"][0]["resources"] == ["pods"]
    dev = find(
        rendered["overlays/dev"], "MutatingWebhookConfiguration", "modelplane-sidecar-injector"
    )
    assert dev["webhooks"][0]["failurePolicy"] == "Ignore"
    # The webhook's Service reaches its Deployment's HTTPS port.
    service = find(rendered["base"], "Service", "modelplane-injector")
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    container = _container(rendered["base"], "modelplane-injector")
    assert container["args"][:2] == ["injector", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_cli_commands_in_manifests_parse(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from modelplane.cli import build_parser

    parser = build_parser()
    for deployment in ("modelplane-controlplane", "modelplane-injector"):
        container = _container(rendered["base"], deployment)
        assert container["command"] == ["modelplane"]
        args = parser.parse_args(container["args"])
        assert callable(args.handler)


def test_dev_overlay_secrets_match_references(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev = rendered["overlays/dev"]
    secrets = {r["metadata"]["name"]: r for r in dev if r["kind"] == "Secret"}
    assert {"modelplane-db", "modelplane-auth"} <= set(secrets)
    from controlplane.auth.identity import TokenAuthenticator

    assert len(TokenAuthenticator.load(DEPLOY / "overlays/dev/dev-tokens.yaml")) == 2


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/production"])
def test_overlays_keep_the_base(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    names = {(r["kind"], r["metadata"]["name"]) for r in rendered["base"]}
    assert names <= {(r["kind"], r["metadata"]["name"]) for r in rendered[overlay]}
    container = _container(rendered[overlay], "modelplane-controlplane")
    assert container["readinessProbe"]["grpc"]["port"] == 50051
