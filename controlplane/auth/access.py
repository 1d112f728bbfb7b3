"""Putting access control together from the server settings."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import grpc

from controlplane.api.roles import principal_with_roles
from controlplane.auth.errors import AccessConfigError
from controlplane.auth.identity import JwtAuthenticator, TokenAuthenticator, loopback_clients
from controlplane.auth.policy import PermissionPolicy
from controlplane.auth.tls import server_credentials
from controlplane.settings import ControlPlaneSettings
from modelplane.server.interceptor import Authenticator, Authorizer

OFF = "off"
NONE = "none"
TOKENS = "tokens"
JWT = "jwt"


@dataclass(frozen=True)
class AccessControl:
    """How the server identifies callers, what it lets them do, and its TLS credentials.

    ``mode`` is ``off`` (loopback clients, names and roles as the client sends them),
    ``none`` (the same from any address), ``tokens`` or ``jwt``; ``authorizer`` is None while
    access control is off.
    """

    mode: str
    authenticator: Authenticator
    authorizer: Authorizer | None
    credentials: grpc.ServerCredentials | None

    @property
    def enabled(self) -> bool:
        """True when callers must prove who they are."""
        return self.authorizer is not None


def is_loopback_listen(listen: str) -> bool:
    """Whether ``HOST:PORT`` binds only loopback addresses (``localhost``, 127/8, ``::1``)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(settings: ControlPlaneSettings) -> AccessControl:
    """Access control for ``settings``; :class:`AccessConfigError` when they cannot work,
    including a non-loopback ``listen`` without access control and without ``--auth none``."""
    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.client_ca)
    spec = settings.auth.strip()
    kind, _, arg = spec.partition(":")
    if not spec:
        if not is_loopback_listen(settings.listen):
            raise AccessConfigError(
                f"refusing to listen on {settings.listen} without access control: use "
                "--auth tokens:FILE or --auth jwt, or --auth none to serve without it anyway"
            )
        return AccessControl(OFF, loopback_clients(), None, credentials)
    if kind == NONE and not arg:
        return AccessControl(NONE, principal_with_roles, None, credentials)
    if kind == TOKENS:
        if not arg:
            raise AccessConfigError("--auth tokens:FILE needs the path of the tokens file")
        return AccessControl(TOKENS, TokenAuthenticator.load(arg), PermissionPolicy(), credentials)
    if kind == JWT and not arg:
        if not settings.jwt_key:
            raise AccessConfigError("--auth jwt needs --jwt-key (a PEM public key or a secret)")
        authenticator = JwtAuthenticator.from_key_file(
            settings.jwt_key,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.jwt_roles_claim,
            settings.jwt_models_claim,
        )
        return AccessControl(JWT, authenticator, PermissionPolicy(), credentials)
    raise AccessConfigError(f"--auth {spec[:60]!r} is not understood: use tokens:FILE, jwt or none")
