"""A TLS file of the wrong kind (a public key given as the CA bundle, a key as the client
certificate, a certificate as its key) is refused before connecting, as an empty or non-PEM one
is: INVALID_TLS_FILE, a usage error (exit 2) in the CLI, rather than gRPC's SSL log lines and
"cannot reach" (exit 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from modelplane import Client, InvalidArgument
from modelplane.cli import main
from tests.deploy.conftest import tls_files  # noqa: F401

#: Nothing listens here: a file let through ends in exit 4, not 2.
NOWHERE = "127.0.0.1:1"


@pytest.fixture(scope="module")
def pems(
    tls_files: tuple[Path, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """A self-signed certificate, its private key and its public key, as PEM files."""
    cert, key = tls_files
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public = tmp_path_factory.mktemp("pems") / "public_key.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {"certificate": cert, "private key": key, "public key": public}


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
