"""deploy/examples/jwt, the component that switches the control plane to JWTs: added to the
base, MODELPLANE_JWT_KEY names a file the pod really mounts (from Secret modelplane-auth), and
the rendered settings build JWT access control from a key stored at that path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, find, is_builtin, render, validate_strict

COMPONENT = DEPLOY / "examples" / "jwt"


@pytest.fixture(scope="module")
def with_jwt(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base with the JWT component, rendered (kustomize wants relative paths)."""
    tmp = tmp_path_factory.mktemp("jwt-variant")
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(DEPLOY / "base", tmp)],
                "components": [os.path.relpath(COMPONENT, tmp)],
            }
        )
    )
    return render(tmp)


def _mounted_secret_files(resources: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each file the control plane's container sees from a Secret: path -> (Secret, key)."""
    pod = find(resources, "Deployment", "modelplane-controlplane")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    files: dict[str, tuple[str, str]] = {}
    for mount in container["volumeMounts"]:
        secret = volumes.get(mount["name"])
        for item in (secret or {}).get("items", []):
            path = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
            files[path] = (secret["secretName"], item["key"])
    return files


def test_the_jwt_key_setting_names_a_mounted_secret_file(
    with_jwt: list[dict[str, Any]],
) -> None:
    config = find(with_jwt, "ConfigMap", "modelplane-controlplane")["data"]
    assert config["MODELPLANE_AUTH"] == "jwt"
    assert config["MODELPLANE_JWT_ISSUER"] and config["MODELPLANE_JWT_AUDIENCE"]
    files = _mounted_secret_files(with_jwt)
    assert files[config["MODELPLANE_JWT_KEY"]] == ("modelplane-auth", "jwt-key.pem")
    # JWT only: the Secret need not hold a tokens file any more.
    assert all(key != "tokens.yaml" for _, key in files.values())
    for resource in with_jwt:
        if is_builtin(resource):
            validate_strict(resource)


def test_the_rendered_settings_build_jwt_access_control(
    with_jwt: list[dict[str, Any]], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from controlplane.auth.access import build
    from controlplane.settings import ControlPlaneSettings

    config = find(with_jwt, "ConfigMap", "modelplane-controlplane")["data"]
    values = {k.removeprefix("MODELPLANE_").lower(): v for k, v in config.items()}
    # The key file where the pod would see it, under a temporary root.
    key_file = tmp_path / config["MODELPLANE_JWT_KEY"].lstrip("/")
    key_file.parent.mkdir(parents=True)
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    values["jwt_key"] = str(key_file)
    settings = ControlPlaneSettings(**values)
    assert build(settings).mode == "jwt"
