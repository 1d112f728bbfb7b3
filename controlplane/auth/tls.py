"""TLS and mutual TLS for the control plane's listener."""

from __future__ import annotations

from pathlib import Path

import grpc

from controlplane.auth.errors import AccessConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AccessConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """Credentials for ``add_secure_port``, or None to serve plaintext (no files given).

    With ``client_ca`` the server also requires a client certificate signed by that CA.
    """
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise AccessConfigError(
            "TLS needs both --tls-cert and --tls-key (a --client-ca alone is not enough)"
        )
    chain, private_key = _read(cert, "TLS certificate"), _read(key, "TLS key")
    roots = _read(client_ca, "client CA bundle") if client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(private_key, chain)], root_certificates=roots, require_client_auth=bool(client_ca)
        )
    except Exception as exc:
        raise AccessConfigError(f"the TLS files cannot be used: {exc}") from None
