"""Who is calling: bearer tokens from a file, JWTs, or (access control off) loopback clients.

Each identity provider is an :data:`modelplane.server.interceptor.Authenticator`: it reads the
call's metadata and returns the caller's :class:`RequestContext` (principal and grants), or
raises :class:`Unauthenticated` with a reason a client can branch on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from controlplane.api.roles import (
    MAX_ROLES,
    ROLE_NAME,
    clean_roles,
    parse_roles,
    principal_with_roles,
)
from controlplane.auth.errors import AccessConfigError
from controlplane.names import check_id
from modelplane.errors import InvalidArgument, Unauthenticated
from modelplane.server.context import (
    Grant,
    RequestContext,
    clean_principal,
    reserved_principal,
)
from modelplane.server.interceptor import Authenticator

AUTHORIZATION_METADATA_KEY = "authorization"
MIN_TOKEN_CHARS = 16
MIN_HMAC_KEY_BYTES = 32
JWT_LEEWAY_SECONDS = 30


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token of an ``authorization: Bearer <token>`` header."""
    value = metadata.get(AUTHORIZATION_METADATA_KEY)
    if not value:
        raise Unauthenticated(
            "this control plane requires credentials: send 'authorization: Bearer <token>' "
            "(modelplane --token, or MODELPLANE_TOKEN)",
            reason="MISSING_CREDENTIALS",
        )
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the authorization metadata must read 'Bearer <token>'",
            reason="MALFORMED_CREDENTIALS",
        )
    return token.strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenEntry:
    """One token of a tokens file: who it proves and what it grants."""

    principal: str
    grant: Grant


class TokenAuthenticator:
    """Bearer tokens listed in a YAML file.

    The file holds ``tokens:``, a list of entries with ``token``, ``principal``, ``roles`` and
    optionally ``models`` (the model ids the roles are limited to). Tokens are kept only as
    SHA-256 digests and looked up by digest.
    """

    def __init__(self, entries: Mapping[bytes, TokenEntry]) -> None:
        self._entries = dict(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str | Path) -> TokenAuthenticator:
        """Read and check a tokens file; :class:`AccessConfigError` says what is wrong."""
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AccessConfigError(f"cannot read tokens file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise AccessConfigError(f"tokens file {path} is not valid YAML: {exc}") from None
        items = doc.get("tokens") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise AccessConfigError(
                f"tokens file {path} must hold 'tokens:', a non-empty list of entries with "
                "token, principal, roles and optional models"
            )
        entries: dict[bytes, TokenEntry] = {}
        for i, item in enumerate(items):
            token, entry = _entry(item, f"{path}: tokens[{i}]")
            if _digest(token) in entries:
                raise AccessConfigError(
                    f"{path}: tokens[{i}] repeats the token of an earlier entry"
                )
            entries[_digest(token)] = entry
        return cls(entries)

    def __call__(self, metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
        entry = self._entries.get(_digest(bearer_token(metadata)))
        if entry is None:
            raise Unauthenticated(
                "the bearer token is not known to this control plane; check --token or "
                "MODELPLANE_TOKEN",
                reason="INVALID_TOKEN",
            )
        return RequestContext(
            principal=entry.principal,
            roles=entry.grant.roles,
            grants=(entry.grant,),
            authenticated=True,
        )


def _entry(item: Any, where: str) -> tuple[str, TokenEntry]:
    if not isinstance(item, dict):
        raise AccessConfigError(f"{where} must be a mapping with token, principal and roles")
    unknown = set(item) - {"token", "principal", "roles", "models"}
    if unknown:
        raise AccessConfigError(f"{where} has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    token = item.get("token")
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS or " " in token.strip():
        raise AccessConfigError(
            f"{where}: token must be a string of at least {MIN_TOKEN_CHARS} characters "
            "without spaces"
        )
    name = item.get("principal")
    principal = clean_principal(name if isinstance(name, str) else None)
    if principal is None:
        raise AccessConfigError(
            f"{where}: principal must be 1-128 characters of letters, digits and ._@:+-"
        )
    if reserved_principal(principal):
        raise AccessConfigError(
            f"{where}: principal {principal!r} is the name the server acts under itself "
            "(automatic rollout moves); give the token another"
        )
    roles = _names(item.get("roles", []), where, "roles", lambda r: bool(ROLE_NAME.match(r)))
    models = _names(item.get("models", []), where, "models", _is_model_id)
    if not roles:
        raise AccessConfigError(f"{where}: roles must name at least one role")
    if len(set(roles)) > MAX_ROLES:
        raise AccessConfigError(f"{where}: roles names more than {MAX_ROLES} roles")
    if len(set(models)) > MAX_TOKEN_MODELS:
        raise AccessConfigError(
            f"{where}: models names more than {MAX_TOKEN_MODELS} models; leave models out for "
            "a token that acts on every model"
        )
    if "models" in item and not models:
        # Left out, a token acts on every model; an empty list is a template's slip, not that.
        raise AccessConfigError(
            f"{where}: models is empty: list the models the token may act on, or leave models "
            "out for a token that acts on every model"
        )
    return token.strip(), TokenEntry(principal, Grant(clean_roles(roles), tuple(sorted(models))))


#: The most models one tokens-file entry may be limited to (lists select its models' entries
#: in their queries, a few terms per model).
MAX_TOKEN_MODELS = 1000


def _is_model_id(value: str) -> bool:
    try:
        check_id(value, "model id")
    except InvalidArgument:
        return False
    return True


def _names(value: Any, where: str, key: str, valid: Callable[[str], bool]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessConfigError(f"{where}: {key} must be a list of names")
    bad = [v for v in value if not valid(v)]
    if bad:
        raise AccessConfigError(f"{where}: invalid {key} {', '.join(map(repr, bad))}")
    return tuple(value)


class JwtAuthenticator:
    """Bearer JWTs signed with an HMAC secret (HS256) or verified with a public key (RS256,
    ES256, EdDSA). The principal is ``sub``; roles come from a claim (dotted paths reach into
    nested objects, e.g. ``realm_access.roles``) holding a list or a space/comma-separated
    string. ``exp``, ``iss``, ``aud`` and ``sub`` are required.

    The models claim (``models`` by default, dotted paths as for roles), when the token has
    it, limits the roles to the model ids it lists, as a tokens file's ``models`` does: it must
    be a list of 1 to :data:`MAX_TOKEN_MODELS` valid model ids, and a token whose claim is not
    is refused (``INVALID_CLAIM``) rather than let act on every model. Without the claim the
    roles hold on every model."""

    def __init__(
        self,
        key: Any,
        algorithms: list[str],
        issuer: str,
        audience: str,
        roles_claim: str = "roles",
        leeway: float = JWT_LEEWAY_SECONDS,
        models_claim: str = "models",
    ) -> None:
        self._key = key
        self._algorithms = algorithms
        self._issuer = issuer
        self._audience = audience
        self._roles_path = [p for p in roles_claim.split(".") if p]
        self._leeway = leeway
        self._models_claim = models_claim
        self._models_path = [p for p in models_claim.split(".") if p]

    @classmethod
    def from_key_file(
        cls,
        path: str | Path,
        issuer: str,
        audience: str,
        roles_claim: str = "roles",
        models_claim: str = "models",
    ) -> JwtAuthenticator:
        """Read a PEM public key (RSA, EC or Ed25519) or an HMAC secret from ``path``."""
        if not issuer or not audience:
            raise AccessConfigError("--auth jwt needs --jwt-issuer and --jwt-audience")
        if models_claim and not models_claim.strip("."):
            raise AccessConfigError(
                f"--jwt-models-claim {models_claim!r} names no claim: give a claim name, "
                "dotted for a nested one (realm_access.models)"
            )
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise AccessConfigError(f"cannot read JWT key {path}: {exc.strerror}") from None
        key, algorithms = _verification_key(raw, str(path))
        return cls(
            key,
            algorithms,
            issuer,
            audience,
            roles_claim or "roles",
            models_claim=models_claim or "models",
        )

    def __call__(self, metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
        token = bearer_token(metadata)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "the token has expired; get a fresh one", reason="TOKEN_EXPIRED"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                "the token is not valid yet (nbf/iat in the future)", reason="TOKEN_NOT_YET_VALID"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the token is not meant for this control plane (audience {self._audience!r})",
                reason="INVALID_AUDIENCE",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"the token was not issued by {self._issuer!r}", reason="INVALID_ISSUER"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"the token lacks the {exc.claim!r} claim",
                reason="MISSING_CLAIM",
                metadata={"claim": exc.claim},
            ) from None
        except jwt.PyJWTError:
            # InvalidTokenError, and InvalidKeyError for a header naming an algorithm the key
            # cannot verify: the caller's token is wrong either way.
            raise Unauthenticated(
                "the token is malformed or its signature does not verify", reason="INVALID_TOKEN"
            ) from None
        principal = clean_principal(claims["sub"] if isinstance(claims["sub"], str) else None)
        if principal is None:
            raise Unauthenticated(
                "the token's sub claim is not a usable principal name "
                "(1-128 ASCII letters, digits and ._@:+-)",
                reason="INVALID_TOKEN",
            )
        if reserved_principal(principal):
            raise Unauthenticated(
                f"the token's sub claim {principal!r} is the name the server acts under itself "
                "(automatic rollout moves); no token may carry it",
                reason="INVALID_TOKEN",
            )
        roles = self._roles(claims)
        return RequestContext(
            principal=principal,
            roles=roles,
            grants=(Grant(roles, self._models(claims)),),
            authenticated=True,
        )

    def _roles(self, claims: dict[str, Any]) -> tuple[str, ...]:
        value: Any = claims
        for part in self._roles_path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return parse_roles(value.replace(" ", ","))
        if isinstance(value, list):
            return clean_roles([v for v in value if isinstance(v, str)])
        return ()

    def _models(self, claims: dict[str, Any]) -> tuple[str, ...]:
        """The model ids the token's models claim limits its roles to; () without the claim
        (roles on every model). A claim that is there but unusable is refused: read as no
        limit, it would widen the token."""
        value: Any = claims
        for depth, part in enumerate(self._models_path):
            if not isinstance(value, dict):
                raise self._bad_models(f"{'.'.join(self._models_path[:depth])} is not an object")
            if part not in value:
                return ()
            value = value[part]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad_models("it must be a list of model ids")
        if not value:
            raise self._bad_models(
                "it is empty; a token that acts on every model must not carry the claim"
            )
        models = sorted(set(value))
        if len(models) > MAX_TOKEN_MODELS:
            raise self._bad_models(f"it names more than {MAX_TOKEN_MODELS} models")
        bad = [m for m in models if not _is_model_id(m)]
        if bad:
            shown = ", ".join(repr(m[:70]) for m in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise self._bad_models(f"it holds invalid model ids {shown}{more}")
        return tuple(models)

    def _bad_models(self, why: str) -> Unauthenticated:
        return Unauthenticated(
            f"the token's {self._models_claim!r} claim (the models its roles are limited to) "
            f"cannot be used: {why}",
            reason="INVALID_CLAIM",
            metadata={"claim": self._models_claim},
        )


def _verification_key(raw: bytes, where: str) -> tuple[Any, list[str]]:
    text = raw.strip()
    if text.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY" in text:
            raise AccessConfigError(
                f"{where} holds a private key; give the control plane the public key only"
            )
        try:
            key = load_pem_public_key(text)
        except ValueError:
            raise AccessConfigError(f"{where} is not a readable PEM public key") from None
        if isinstance(key, rsa.RSAPublicKey):
            return key, ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        if isinstance(key, ec.EllipticCurvePublicKey):
            # Each ES algorithm is defined on one curve: accept only the key's own.
            algorithm = _EC_ALGORITHMS.get(key.curve.name)
            if algorithm is None:
                raise AccessConfigError(
                    f"{where}: an EC key on curve {key.curve.name} verifies no JWT algorithm "
                    "(use P-256, P-384 or P-521)"
                )
            return key, [algorithm]
        if isinstance(key, ed25519.Ed25519PublicKey):
            return key, ["EdDSA"]
        raise AccessConfigError(f"{where}: unsupported public key type {type(key).__name__}")
    if b"-----BEGIN" in text or text.startswith((b"{", b"ssh-", b"ecdsa-")):
        # Not a secret: a PEM block after other text, a JWKS document or an SSH key, which
        # PyJWT would refuse on every call.
        raise AccessConfigError(
            f"{where} is neither a PEM public key (starting with -----BEGIN) nor a raw HMAC "
            "secret; a JWKS document is not supported: give one PEM public key"
        )
    if len(text) < MIN_HMAC_KEY_BYTES:
        raise AccessConfigError(
            f"{where}: an HMAC secret needs at least {MIN_HMAC_KEY_BYTES} bytes"
        )
    return text, ["HS256", "HS384", "HS512"]


#: The JWT algorithm each NIST curve's keys sign with (RFC 7518, section 3.4).
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``)
    is a loopback client. gRPC writes IPv6 peers URL-encoded (``ipv6:%5B::1%5D:5000``)."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if kind == "unix":
        return True
    if kind == "ipv4":
        host = rest.rsplit(":", 1)[0]
    elif kind == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]")
    else:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_clients(authenticator: Authenticator = principal_with_roles) -> Authenticator:
    """``authenticator``, for clients connecting over loopback only (access control off)."""

    def authenticate(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
        if not is_loopback_peer(context.peer()):
            raise Unauthenticated(
                "access control is off, so this control plane serves loopback clients only",
                reason="LOOPBACK_ONLY",
            )
        return authenticator(metadata, context)

    return authenticate
