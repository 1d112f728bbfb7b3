"""What the SDK and the CLI refuse before connecting: TLS files that are empty or not PEM
(gRPC takes an empty CA bundle as none given and trusts the system's CAs), principals, roles
and tokens that gRPC metadata cannot carry, and a ``--sidecar`` that is not HOST:PORT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.cli import build_parser, main
from modelplane.errors import InvalidArgument

#: Nothing listens here: a check that lets a command through ends in exit 4, not 2.
NOWHERE = "127.0.0.1:1"

BAD_PEMS = {
    "empty": (b"", "is empty"),
    "blank": (b" \n\n", "is empty"),
    "der": (b"\x30\x82\x01\x0a\x02\x82", "holds no PEM block"),
    "text": (b"not a certificate\n", "holds no PEM block"),
    "not-base64": (
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        "not base64",
    ),
    "legacy-encrypted-key": (
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        b"DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n"
        b"-----END RSA PRIVATE KEY-----\n",
        "encrypted private key",
    ),
    "pkcs8-encrypted-key": (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        "encrypted private key",
    ),
}


@pytest.fixture(params=sorted(BAD_PEMS))
def bad_pem(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    data, problem = BAD_PEMS[request.param]
    path = tmp_path / f"{request.param}.pem"
    path.write_bytes(data)
    return path, problem


@pytest.mark.parametrize("option", ["tls_ca", "tls_cert", "tls_key"])
def test_sdk_refuses_a_tls_file_that_is_empty_or_not_pem(
    option: str, bad_pem: tuple[Path, str], tmp_path: Path
) -> None:
    path, problem = bad_pem
    good = tmp_path / "good.pem"
    good.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    files = {"tls_cert": good, "tls_key": good, option: path}
    with pytest.raises(InvalidArgument) as err:
        Client(NOWHERE, **files)  # type: ignore[arg-type]
    assert err.value.reason == "INVALID_TLS_FILE"
    assert str(path) in err.value.message and problem in err.value.message


@pytest.mark.parametrize("option", ["--tls-ca", "--tls-cert", "--tls-key"])
def test_cli_refuses_an_empty_tls_file_as_a_usage_error(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    good = tmp_path / "good.pem"
    good.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    files = {"--tls-cert": good, "--tls-key": good, option: empty}
    tls = [str(a) for pair in files.items() for a in pair]
    code = main(["--server", NOWHERE, "--timeout", "2", "--output", "json", *tls, "models", "list"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and err.count("\n") == 1
    assert "(INVALID_TLS_FILE)" in err and f"{empty} is empty" in err


def test_the_managed_sidecar_refuses_an_empty_control_plane_ca(tmp_path: Path) -> None:
    from sidecar.managed.server import control_plane_channel
    from sidecar.settings import SidecarSettings

    empty = tmp_path / "ca.pem"
    empty.write_bytes(b"")
    settings = SidecarSettings(  # type: ignore[call-arg]  # the rest from defaults
        control_plane=NOWHERE, deployment="fraud", control_plane_tls_ca=empty
    )
    with pytest.raises(InvalidArgument) as err:
        control_plane_channel(settings)
    assert err.value.reason == "INVALID_TLS_FILE"
    assert "--control-plane-tls-ca" in err.value.message and "is empty" in err.value.message


def test_a_managed_sidecar_refuses_control_plane_tls_files_of_the_wrong_kind(
    tmp_path: Path,
) -> None:
    """A CA bundle holding a public key (what ``keys show`` prints) or a key file holding a
    certificate: before, gRPC was handed them and the sidecar only ever said it could not
    reach the control plane."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sidecar.managed.server import control_plane_channel
    from sidecar.settings import SidecarSettings

    public = tmp_path / "key.pub"
    public.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings = SidecarSettings(  # type: ignore[call-arg]  # the rest from defaults
        control_plane=NOWHERE, deployment="fraud", control_plane_tls_ca=public
    )
    with pytest.raises(InvalidArgument) as err:
        control_plane_channel(settings)
    assert err.value.reason == "INVALID_TLS_FILE"
    assert "--control-plane-tls-ca" in err.value.message and "certificate" in err.value.message


def test_sidecar_serve_refuses_a_control_plane_ca_that_is_not_pem(tmp_path: Path) -> None:
    """At start, as a usage error (before, it served, trusting the system's CAs)."""
    bad = tmp_path / "ca.pem"
    bad.write_bytes(b"not a certificate\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "sidecar",
            "serve",
            "--control-plane",
            NOWHERE,
            "--deployment",
            "fraud",
            "--control-plane-tls-ca",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "--control-plane-tls-ca" in done.stderr and "holds no PEM block" in done.stderr


# Values sent as gRPC metadata --------------------------------------------------------------


@pytest.mark.parametrize("principal", ["José", "a\r\nb", "tab\there"])
def test_sdk_refuses_a_principal_metadata_cannot_carry(principal: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        Client(NOWHERE, principal=principal)
    assert err.value.reason == "INVALID_METADATA" and err.value.metadata["field"] == "principal"
    assert repr(principal) in err.value.message


def test_sdk_refuses_a_token_metadata_cannot_carry_without_showing_it() -> None:
    with pytest.raises(InvalidArgument) as err:
        Client(NOWHERE, token="s3crét-token")
    assert err.value.metadata["field"] == "token"
    assert "s3cr" not in err.value.message and "é" not in err.value.message


def test_sdk_refuses_roles_metadata_cannot_carry() -> None:
    with Client(NOWHERE, principal="ops") as c:
        with pytest.raises(InvalidArgument) as err:
            c.with_roles(["risk", "rïsk"])
        assert err.value.metadata["field"] == "roles"
        c.with_roles(["risk"])  # printable ASCII passes


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--as", "José", "models", "get", "fraud"], "--as"),
        (["--as", "a\nb", "models", "get", "fraud"], "--as"),
        (["--token", "tök", "models", "get", "fraud"], "--token"),
        (
            ["--as", "ops", "--roles", "rïsk", "approve", "fraud", "2", "--target", "production"],
            "--roles",
        ),
    ],
)
def test_cli_refuses_metadata_it_cannot_send_as_a_usage_error(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--server", NOWHERE, "--timeout", "2", "--output", "json", *argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and err.count("\n") == 1
    assert f"{option} " in err and "(INVALID_METADATA)" in err and "tök" not in err


def test_a_principal_from_the_environment_is_checked_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELPLANE_PRINCIPAL", "José")
    assert build_parser().parse_args(["models", "list"]).principal == "José"
    assert main(["--server", NOWHERE, "--timeout", "2", "models", "list"]) == 2
    assert "MODELPLANE_PRINCIPAL" in capsys.readouterr().err


# --sidecar -----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["notanaddress", "127.0.0.1", "h:0", "::1"])
def test_drift_report_refuses_a_sidecar_that_is_not_host_port(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drift", "report", "--sidecar", address]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: --sidecar {address!r}: use HOST:PORT")


def test_labels_send_checks_every_sidecar_before_sending_to_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr1,1\n", encoding="utf-8")
    argv = ["labels", "send", str(labels), "--sidecar", NOWHERE, "--sidecar", "nowhere"]
    assert main(["--timeout", "2", *argv]) == 2
    assert "--sidecar 'nowhere'" in capsys.readouterr().err


def test_a_sidecar_that_is_host_port_is_tried(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--timeout", "1", "drift", "report", "--sidecar", NOWHERE]) == 4
    assert "cannot reach the sidecar" in capsys.readouterr().err
