"""The webhook's manifests as kustomize renders them: its certificate chain and caBundle, and
a termination grace that covers its shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import find

VARIANTS = ["base", "overlays/dev", "overlays/production"]


def _hours(duration: str) -> float:
    assert duration.endswith("h"), duration
    return float(duration[:-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_caBundle_is_a_long_lived_ca_not_the_serving_certificate(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    resources = rendered[variant]
    webhook = find(resources, "MutatingWebhookConfiguration", "modelplane-sidecar-injector")
    namespace, _, ca_name = webhook["metadata"]["annotations"][
        "cert-manager.io/inject-ca-from"
    ].partition("/")
    ca = find(resources, "Certificate", ca_name)
    assert ca["metadata"]["namespace"] == namespace
    assert ca["spec"]["isCA"] is True
    # The CA is self-signed...
    root = find(resources, "Issuer", ca["spec"]["issuerRef"]["name"])
    assert ca["spec"]["issuerRef"]["kind"] == "Issuer" and root["spec"] == {"selfSigned": {}}
    # ...and signs the serving certificate through a CA Issuer of its Secret.
    deployment = find(resources, "Deployment", "modelplane-injector")
    (tls,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    (serving,) = [
        c
        for c in resources
        if c["kind"] == "Certificate" and c["spec"]["secretName"] == tls["secret"]["secretName"]
    ]
    assert serving["metadata"]["name"] != ca_name and not serving["spec"].get("isCA")
    issuer = find(resources, "Issuer", serving["spec"]["issuerRef"]["name"])
    assert serving["spec"]["issuerRef"]["kind"] == "Issuer"
    assert issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert issuer["metadata"]["namespace"] == namespace
    # The serving certificate names the Service the API server calls.
    service = webhook["webhooks"][0]["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in serving["spec"]["dnsNames"]
    # The CA outlives many serving certificates, and keeps its key when it is renewed.
    assert _hours(ca["spec"]["duration"]) >= 5 * _hours(serving["spec"]["duration"])
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_termination_grace_covers_the_shutdown_delay_and_the_drain(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    from controlplane.injector import InjectorSettings

    resources = rendered[variant]
    pod = find(resources, "Deployment", "modelplane-injector")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    data = find(resources, "ConfigMap", "modelplane-injector")["data"]
    settings = InjectorSettings(
        tls_cert=Path("/tls.crt"),
        tls_key=Path("/tls.key"),
        **{key.removeprefix("MODELPLANE_INJECTOR_").lower(): value for key, value in data.items()},
    )
    # Not ready from SIGTERM on, long enough for the readiness probe to take the pod out of
    # the Service's endpoints; liveness stays on a path that does not fail meanwhile.
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/healthz" and liveness["httpGet"]["path"] == "/livez"
    delay = settings.shutdown_delay_seconds
    assert delay >= readiness["periodSeconds"] * readiness.get("failureThreshold", 3)
    # Reviews in flight get as long as the API server waits for them...
    webhook = find(resources, "MutatingWebhookConfiguration", "modelplane-sidecar-injector")
    assert settings.grace_seconds >= webhook["webhooks"][0]["timeoutSeconds"]
    # ...and all of it ends before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > delay + settings.grace_seconds


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_probes_go_to_the_health_port_which_the_service_does_not_expose(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    from controlplane.injector import InjectorSettings
    from modelplane.cli import build_parser

    resources = rendered[variant]
    (container,) = find(resources, "Deployment", "modelplane-injector")["spec"]["template"]["spec"][
        "containers"
    ]
    args = build_parser().parse_args(container["args"])
    listen = args.health_listen or InjectorSettings.model_fields["health_listen"].default
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["health"] == int(listen.rpartition(":")[2]) != ports["https"]
    # Off the port whose connections max_connections caps, so that they cannot fail the probes.
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "health" and get.get("scheme", "HTTP") == "HTTP", probe
    service = find(resources, "Service", "modelplane-injector")
    assert {port["targetPort"] for port in service["spec"]["ports"]} == {"https"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_reviews_received_and_parsed_at_once_fit_the_memory_limit(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    from controlplane.injector.settings import (
        CONNECTION_MEMORY,
        PARSE_MEMORY_FACTOR,
        InjectorSettings,
    )

    resources = rendered[variant]
    (container,) = find(resources, "Deployment", "modelplane-injector")["spec"]["template"]["spec"][
        "containers"
    ]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    data = find(resources, "ConfigMap", "modelplane-injector")["data"]
    settings = InjectorSettings(
        tls_cert=Path("/tls.crt"),
        tls_key=Path("/tls.key"),
        **{key.removeprefix("MODELPLANE_INJECTOR_").lower(): value for key, value in data.items()},
    )
    # The process itself takes about 70 MiB before any review; besides what parsing takes,
    # the bodies being received and the connections' own memory.
    worst = 80 * 2**20 + PARSE_MEMORY_FACTOR * settings.max_parsing_bytes
    worst += settings.max_receiving_bytes + settings.max_connections * CONNECTION_MEMORY
    assert worst <= int(limit[:-2]) * 2**20
    # A request is read for at least as long as the API server waits for the answer.
    webhook = find(resources, "MutatingWebhookConfiguration", "modelplane-sidecar-injector")
    assert settings.read_timeout_seconds >= webhook["webhooks"][0]["timeoutSeconds"]
