"""The webhook's manifests as kustomize renders them: its certificate chain and caBundle, and
a termination grace that covers its shutdown."""

from __future__ import annotations

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
