"""TLS and mutual TLS through the SDK and the CLI (certificates made here with
``cryptography``), the ``serve`` options end to end, and the loopback-only default."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.auth import AccessConfigError, is_loopback_listen
from controlplane.auth.identity import is_loopback_peer
from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane._client import ServerUnreachable
from modelplane.cli import main
from modelplane.errors import InvalidArgument
from modelplane.testing.processes import free_port
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a client
    certificate from another CA; all PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    ca_path, _ = _write(folder, "ca", ca, ca_key)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server_cert, server_key_path = _write(
        folder, "server", _cert("localhost", server_key, "test-ca", ca_key, server=True), server_key
    )
    client_cert, client_key_path = _write(
        folder, "client", _cert("ci-bot", client_key, "test-ca", ca_key), client_key
    )
    rogue_cert, rogue_key_path = _write(
        folder, "rogue", _cert("ci-bot", rogue_key, "other-ca", rogue_ca_key), rogue_key
    )
    return Pki(
        ca_path,
        server_cert,
        server_key_path,
        client_cert,
        client_key_path,
        rogue_cert,
        rogue_key_path,
    )


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TokenServer]:
    server = start_token_server(
        tmp_path_factory.mktemp("mtls"),
        {"ada": (["admin"], [])},
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        client_ca=str(pki.ca),
    )
    yield server
    server.cp.handle.stop(0)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningControlPlane]:
    """TLS without client certificates and without access control (loopback)."""
    tmp = tmp_path_factory.mktemp("tls")
    cp = start_controlplane(
        tmp,
        f"sqlite:///{tmp / 'cp.db'}",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
    )
    yield cp
    cp.handle.stop(0)


def test_sdk_over_tls(tls_server: RunningControlPlane, pki: Pki) -> None:
    model_id = unique()
    with Client(tls_server.address, principal="alice", tls_ca=pki.ca, timeout=30) as c:
        assert c.create_model(model_id).created_by == "alice"
    with (
        Client(tls_server.address, principal="alice", timeout=5) as plain,
        pytest.raises(ServerUnreachable),
    ):
        plain.get_model(model_id)


def test_sdk_over_mutual_tls(mtls_server: TokenServer, pki: Pki) -> None:
    model_id = unique()
    kw = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
    with mtls_server.client("ada", **kw) as ada:
        ada.create_model(model_id)
        assert ada.get_model(model_id).created_by == "ada"
    for refused in (
        {"tls_ca": pki.ca},
        {"tls_ca": pki.ca, "tls_cert": pki.rogue_cert, "tls_key": pki.rogue_key},
    ):
        with mtls_server.client("ada", timeout=5, **refused) as c, pytest.raises(ServerUnreachable):
            c.get_model(model_id)
    with pytest.raises(InvalidArgument) as incomplete:
        Client(mtls_server.address, tls_ca=pki.ca, tls_cert=pki.client_cert)
    assert incomplete.value.reason == "INCOMPLETE_TLS_CLIENT"


def test_health_over_mutual_tls_needs_no_token(mtls_server: TokenServer, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    with grpc.secure_channel(mtls_server.address, creds) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--output", "json", "--timeout", "10", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_over_tls_and_mutual_tls(
    tls_server: RunningControlPlane,
    mtls_server: TokenServer,
    pki: Pki,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id = unique()
    code, out, err = _cli(
        capsys,
        "--server",
        tls_server.address,
        "--tls-ca",
        str(pki.ca),
        "--as",
        "carol",
        "models",
        "create",
        model_id,
    )
    assert code == 0, err
    assert json.loads(out)["created_by"] == "carol"
    client_tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    client_tls += ["--tls-key", str(pki.client_key)]
    token = ["--token", mtls_server.tokens["ada"]]
    code, out, err = _cli(
        capsys, "--server", mtls_server.address, *client_tls, *token, "models", "create", model_id
    )
    assert code == 0, err
    assert json.loads(out)["created_by"] == "ada"
    code, _, err = _cli(
        capsys, "--server", mtls_server.address, "--tls-ca", str(pki.ca), *token, "models", "list"
    )
    assert code == 4, err
    code, _, err = _cli(capsys, "--server", mtls_server.address, *client_tls, "models", "list")
    assert code == 3 and "MISSING_CREDENTIALS" in err
    code, _, err = _cli(
        capsys,
        "--server",
        mtls_server.address,
        "--tls-ca",
        str(pki.ca) + ".missing",
        "models",
        "list",
    )
    assert code == 2 and "UNREADABLE_TLS_FILE" in err


def test_serve_command_with_tokens_and_mutual_tls(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "mp-serve-test-token-0123456789"
    (tmp_path / "tokens.yaml").write_text(
        f"tokens:\n- token: {token}\n  principal: ops\n  roles: [viewer]\n"
    )
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "controlplane",
            "serve",
            "--listen",
            address,
            "--db",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "art"),
            "--auth",
            f"tokens:{tmp_path / 'tokens.yaml'}",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--client-ca",
            str(pki.ca),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    client_tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    client_tls += ["--tls-key", str(pki.client_key)]
    try:
        deadline = time.monotonic() + 60
        code, out, err = -1, "", ""
        while time.monotonic() < deadline and proc.poll() is None:
            code, out, err = _cli(
                capsys, "--server", address, *client_tls, "--token", token, "models", "list"
            )
            if code == 0:
                break
            time.sleep(0.3)
        assert code == 0, f"the server never answered (exit {proc.poll()}): {err}"
        assert json.loads(out) == {"models": [], "next_page_token": ""}
        code, _, err = _cli(
            capsys, "--server", address, *client_tls, "--token", token, "models", "create", "x"
        )
        assert code == 3 and "ROLE_REQUIRED" in err
    finally:
        proc.terminate()
        _, logs = proc.communicate(timeout=30)
    started = [json.loads(line) for line in logs.splitlines() if '"control plane serving"' in line]
    assert started and started[0]["auth"] == "tokens" and started[0]["tls"] == "mutual"


def test_without_auth_only_loopback_addresses(tmp_path: Path) -> None:
    def settings(listen: str, auth: str = "") -> ControlPlaneSettings:
        values: dict[str, object] = {
            "listen": listen,
            "auth": auth,
            "db_url": f"sqlite:///{tmp_path / 'cp.db'}",
            "artifact_root": str(tmp_path / "artifacts"),
            "grace_seconds": 0.5,
        }
        return ControlPlaneSettings(**values)  # type: ignore[arg-type]

    for listen in ("0.0.0.0:0", "[::]:0", ":0", "192.0.2.10:0", "example.com:0"):
        with pytest.raises(AccessConfigError, match="--auth none"):
            start(settings(listen))
        assert not (tmp_path / "cp.db").exists()
    handle = start(settings("0.0.0.0:0", auth="none"))
    try:
        with Client(f"127.0.0.1:{handle.port}", principal="bob", timeout=30) as bob:
            assert bob.create_model(unique()).created_by == "bob"
    finally:
        handle.stop(0)
    assert is_loopback_listen("localhost:0") and is_loopback_listen("[::1]:50051")
    assert is_loopback_listen("127.0.0.2:1") and not is_loopback_listen("10.0.0.1:1")


def test_serve_command_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "controlplane",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--db",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "art"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "refusing to listen on 0.0.0.0:0" in proc.stderr
    assert not (tmp_path / "cp.db").exists()


def _ipv6_loopback() -> bool:

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_without_auth_ipv6_loopback_clients_are_served(tmp_path: Path) -> None:
    # gRPC names IPv6 peers URL-encoded (ipv6:%5B::1%5D:port): they are still loopback.
    handle = start(
        ControlPlaneSettings(  # type: ignore[call-arg]
            listen="[::1]:0",
            db_url=f"sqlite:///{tmp_path / 'cp.db'}",
            artifact_root=str(tmp_path / "artifacts"),
            grace_seconds=0.5,
        )
    )
    try:
        with Client(f"[::1]:{handle.port}", principal="bob", timeout=30) as bob:
            assert bob.create_model(unique()).created_by == "bob"
    finally:
        handle.stop(0)
    assert is_loopback_peer("ipv6:%5B::1%5D:50000")
    assert not is_loopback_peer("ipv6:%5B2001:db8::1%5D:443")
