"""A TLS file of the wrong kind (a public key given as the CA bundle, a key as the client
certificate, a certificate as its key) is refused before connecting, as an empty or non-PEM one
is: INVALID_TLS_FILE, a usage error (exit 2) in the CLI, rather than gRPC's SSL log lines and
"cannot reach" (exit 4)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelplane import Client, InvalidArgument
from modelplane.cli import main

#: Nothing listens here: a file let through ends in exit 4, not 2.
NOWHERE = "127.0.0.1:1"


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate, its private key and its public key, as PEM files."""
    folder = tmp_path_factory.mktemp("pems")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelplane test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    files = {
        "certificate": cert.public_bytes(serialization.Encoding.PEM),
        "private key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "public key": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for kind, data in files.items():
        (folder / f"{kind.replace(' ', '_')}.pem").write_bytes(data)
    return {kind: folder / f"{kind.replace(' ', '_')}.pem" for kind in files}


# (option, the file given to it, the other TLS files, what the error says)
WRONG_KINDS = [
    ("--tls-ca", "public key", {}, "the CA bundle {} holds no certificate, only PUBLIC KEY"),
    ("--tls-ca", "private key", {}, "the CA bundle {} holds no certificate, only PRIVATE KEY"),
    (
        "--tls-cert",
        "private key",
        {"--tls-key": "private key"},
        "the TLS certificate {} holds no certificate, only PRIVATE KEY",
    ),
    (
        "--tls-key",
        "certificate",
        {"--tls-cert": "certificate"},
        "the TLS key {} holds no private key, only CERTIFICATE",
    ),
]


@pytest.mark.parametrize(("option", "given", "others", "said"), WRONG_KINDS)
def test_the_cli_refuses_a_tls_file_of_the_wrong_kind(
    option: str,
    given: str,
    others: dict[str, str],
    said: str,
    pems: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = [str(a) for o, kind in {**others, option: given}.items() for a in (o, pems[kind])]
    code = main(["--server", NOWHERE, "--timeout", "5", *tls, "models", "list"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith("error: (INVALID_TLS_FILE) "), err
    assert said.format(pems[given]) in err and "(-----BEGIN " in err


@pytest.mark.parametrize(("option", "given", "others", "said"), WRONG_KINDS)
def test_the_sdk_refuses_a_tls_file_of_the_wrong_kind(
    option: str, given: str, others: dict[str, str], said: str, pems: dict[str, Path]
) -> None:
    def keyword(o: str) -> str:
        return o.removeprefix("--").replace("-", "_")

    files = {keyword(o): pems[kind] for o, kind in {**others, option: given}.items()}
    with pytest.raises(InvalidArgument) as refused:
        Client(NOWHERE, **files)  # type: ignore[arg-type]
    assert refused.value.reason == "INVALID_TLS_FILE"
    assert said.format(pems[given]) in refused.value.message


def test_files_of_the_right_kind_are_taken(pems: dict[str, Path]) -> None:
    with Client(
        NOWHERE,
        tls_ca=pems["certificate"],
        tls_cert=pems["certificate"],
        tls_key=pems["private key"],
    ):
        pass
