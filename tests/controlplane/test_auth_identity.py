"""Identity: JWTs (HS256 and RS256), tokens files and their mistakes, metadata that is ignored
once access control is on, and health and reflection staying open."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.auth import AccessConfigError
from controlplane.auth.identity import is_loopback_peer
from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane.errors import PermissionDenied, Unauthenticated
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_auth_permissions import TokenServer, reason_of

ISSUER = "https://issuer.test"
AUDIENCE = "modelplane-test"
SECRET = b"a-test-secret-of-at-least-32-bytes-long!"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "jill",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "roles": ["developer"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwt_server(tmp: Path, key_file: Path, **overrides: object) -> RunningControlPlane:
    return start_controlplane(
        tmp,
        f"sqlite:///{tmp / 'cp.db'}",
        auth="jwt",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_key=str(key_file),
        **overrides,
    )


@pytest.fixture(scope="module")
def hs256(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    tmp = tmp_path_factory.mktemp("hs256")
    (tmp / "secret").write_bytes(SECRET + b"\n")
    cp = _jwt_server(tmp, tmp / "secret")
    yield cp
    cp.handle.stop(0)


@pytest.fixture(scope="module")
def rs256(
    tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey
) -> Iterator[RunningControlPlane]:
    tmp = tmp_path_factory.mktemp("rs256")
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp / "public.pem").write_bytes(pem)
    cp = _jwt_server(tmp, tmp / "public.pem", jwt_roles_claim="realm_access.roles")
    yield cp
    cp.handle.stop(0)


def _hs(**claims: Any) -> str:
    return jwt.encode(_claims(**claims), SECRET, algorithm="HS256")


def test_a_claim_of_many_groups_keeps_the_built_in_roles(hs256: RunningControlPlane) -> None:
    """An identity provider's group claim may hold more roles than are kept (32): the built-in
    ones stay, whatever names sort before them."""
    groups = [f"grp-{i:02}" for i in range(40)]
    model_id = unique()
    with Client(hs256.address, token=_hs(roles=["admin"]), timeout=30) as admin:
        admin.create_model(model_id)
    with Client(hs256.address, token=_hs(roles=[*groups, "viewer"]), timeout=30) as many:
        assert many.get_model(model_id).name == f"models/{model_id}"
    with (
        Client(hs256.address, token=_hs(roles=groups), timeout=30) as none,
        pytest.raises(PermissionDenied),
    ):
        none.get_model(model_id)


def test_hs256_token_identifies_the_caller(hs256: RunningControlPlane) -> None:
    model_id = unique()
    with Client(hs256.address, token=_hs(), principal="mallory", timeout=30) as jill:
        jill.create_model(model_id)
        assert jill.get_model(model_id).name == f"models/{model_id}"
        # The name the client sends is ignored; the token's sub is the principal.
        assert [
            e.actor
            for e in Client(hs256.address, token=_hs(roles=["admin"])).audit_events(
                resource=f"models/{model_id}"
            )
        ] == ["jill"]
        with pytest.raises(PermissionDenied) as denied:
            jill.with_roles(["admin"]).create_checkpoint()
        assert denied.value.reason == "ROLE_REQUIRED"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: _hs(exp=int(time.time()) - 3600), "TOKEN_EXPIRED"),
        (lambda: _hs(aud="someone-else"), "INVALID_AUDIENCE"),
        (lambda: _hs(iss="https://evil.test"), "INVALID_ISSUER"),
        (lambda: _hs(exp=None), "MISSING_CLAIM"),
        (lambda: _hs(sub=None), "MISSING_CLAIM"),
        (lambda: _hs(nbf=int(time.time()) + 3600), "TOKEN_NOT_YET_VALID"),
        (lambda: _hs(sub="no spaces allowed"), "INVALID_TOKEN"),
        (lambda: jwt.encode(_claims(), b"x" * 40, algorithm="HS256"), "INVALID_TOKEN"),
        (lambda: jwt.encode(_claims(), "", algorithm="none"), "INVALID_TOKEN"),
        (lambda: "not.a.jwt", "INVALID_TOKEN"),
    ],
    ids=[
        "expired",
        "audience",
        "issuer",
        "no-exp",
        "no-sub",
        "not-yet-valid",
        "bad-sub",
        "other-secret",
        "alg-none",
        "garbage",
    ],
)
def test_bad_jwts_are_unauthenticated(hs256: RunningControlPlane, token: Any, reason: str) -> None:
    with (
        Client(hs256.address, token=token(), timeout=30) as c,
        pytest.raises(Unauthenticated) as refused,
    ):
        c.get_model("anything")
    assert refused.value.reason == reason
    assert "secret" not in refused.value.message.lower()


def test_rs256_token_with_nested_roles_claim(
    rs256: RunningControlPlane, rsa_key: rsa.RSAPrivateKey
) -> None:
    good = jwt.encode(
        _claims(sub="kim", roles=None, realm_access={"roles": ["admin", "risk"]}),
        rsa_key,
        algorithm="RS256",
    )
    with Client(rs256.address, token=good, timeout=30) as kim:
        assert kim.create_checkpoint().signature
    flat = jwt.encode(_claims(sub="kim"), rsa_key, algorithm="RS256")
    with (
        Client(rs256.address, token=flat, timeout=30) as kim,
        pytest.raises(PermissionDenied) as denied,
    ):
        kim.list_policies().__next__()
    assert denied.value.reason == "ROLE_REQUIRED"
    # The public key used as an HMAC secret must not verify (algorithm confusion).
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _forged_hs256(_claims(sub="kim", realm_access={"roles": ["admin"]}), public_pem)
    with (
        Client(rs256.address, token=forged, timeout=30) as eve,
        pytest.raises(Unauthenticated) as refused,
    ):
        eve.create_checkpoint()
    assert refused.value.reason == "INVALID_TOKEN"
    expired = jwt.encode(_claims(exp=int(time.time()) - 120), rsa_key, algorithm="RS256")
    with (
        Client(rs256.address, token=expired, timeout=30) as c,
        pytest.raises(Unauthenticated) as late,
    ):
        c.get_model("x")
    assert late.value.reason == "TOKEN_EXPIRED"


def _forged_hs256(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token keyed with ``key`` (PyJWT refuses PEM keys as HMAC secrets itself)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_missing_and_malformed_credentials(hs256: RunningControlPlane) -> None:
    with grpc.insecure_channel(hs256.address) as channel:
        from modelplane.v1 import registry_pb2, registry_pb2_grpc

        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.ListModelsRequest()
        for md, reason in [
            ((), "MISSING_CREDENTIALS"),
            ((("authorization", f"Basic {_hs()}"),), "MALFORMED_CREDENTIALS"),
            ((("authorization", "Bearer "),), "MALFORMED_CREDENTIALS"),
            (
                (("x-modelplane-principal", "root"), ("x-modelplane-roles", "admin")),
                "MISSING_CREDENTIALS",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListModels(request, metadata=md, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(refused.value) == reason


def test_health_and_reflection_need_no_credentials(hs256: RunningControlPlane) -> None:
    with grpc.insecure_channel(hs256.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert "modelplane.v1.RegistryService" in names


def test_unknown_bearer_token(tmp_path: Path) -> None:
    from tests.controlplane.test_auth_permissions import start_token_server

    server: TokenServer = start_token_server(tmp_path, {"ada": (["admin"], [])})
    try:
        with (
            Client(server.address, token="mp-not-a-known-token-at-all", timeout=30) as c,
            pytest.raises(Unauthenticated) as refused,
        ):
            c.get_model("x")
        assert refused.value.reason == "INVALID_TOKEN"
        with server.client("ada") as ada:
            ada.create_model(unique())
    finally:
        server.cp.handle.stop(0)


TOKENS_FILE_MISTAKES = {
    "not-yaml": ("tokens: [", "not valid YAML"),
    "no-list": ("tokens: {}\n", "non-empty list"),
    "short-token": (
        "tokens:\n- {token: short, principal: a, roles: [admin]}\n",
        "at least 16 characters",
    ),
    "bad-principal": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: 'a b', roles: [admin]}\n",
        "principal",
    ),
    "no-roles": ("tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: []}\n", "roles"),
    "bad-model": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: [admin], models: [Bad_Id]}\n",
        "invalid models",
    ),
    "empty-models": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: [sidecar], models: []}\n",
        "models is empty",
    ),
    "too-many-models": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: [viewer], models: ["
        + ", ".join(f"m{i}" for i in range(1001))
        + "]}\n",
        "more than 1000 models",
    ),
    "too-many-roles": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: ["
        + ", ".join(f"team-{i:02}" for i in range(33))
        + "]}\n",
        "more than 32 roles",
    ),
    "unknown-key": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: [admin], role: x}\n",
        "unknown keys",
    ),
    "duplicate": (
        "tokens:\n- {token: 0123456789abcdefgh, principal: a, roles: [admin]}\n"
        "- {token: 0123456789abcdefgh, principal: b, roles: [viewer]}\n",
        "repeats the token",
    ),
}


@pytest.mark.parametrize("case", sorted(TOKENS_FILE_MISTAKES))
def test_tokens_file_mistakes_refuse_to_start(tmp_path: Path, case: str) -> None:
    text, message = TOKENS_FILE_MISTAKES[case]
    (tmp_path / "tokens.yaml").write_text(text)
    settings = _settings(tmp_path, auth=f"tokens:{tmp_path / 'tokens.yaml'}")
    with pytest.raises(AccessConfigError, match=message):
        start(settings)
    assert not (tmp_path / "cp.db").exists() and not (tmp_path / "artifacts").exists()


def _settings(tmp: Path, **overrides: object) -> ControlPlaneSettings:
    return ControlPlaneSettings(
        listen="127.0.0.1:0",
        db_url=f"sqlite:///{tmp / 'cp.db'}",
        artifact_root=str(tmp / "artifacts"),
        **overrides,  # type: ignore[arg-type]
    )


def test_jwt_and_auth_setting_mistakes_refuse_to_start(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "private.pem").write_bytes(private)
    (tmp_path / "short").write_bytes(b"too-short")
    jwt_ok = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    cases: list[tuple[dict[str, object], str]] = [
        ({"auth": "jwt", **jwt_ok}, "needs --jwt-key"),
        ({"auth": "jwt", "jwt_key": str(tmp_path / "short"), **jwt_ok}, "at least 32 bytes"),
        ({"auth": "jwt", "jwt_key": str(tmp_path / "private.pem"), **jwt_ok}, "private key"),
        ({"auth": "jwt", "jwt_key": str(tmp_path / "missing")}, "jwt-issuer"),
        ({"auth": "jwt", "jwt_key": str(tmp_path / "missing"), **jwt_ok}, "cannot read"),
        ({"auth": "tokens:"}, "needs the path"),
        ({"auth": "tokens:" + str(tmp_path / "missing.yaml")}, "cannot read"),
        ({"auth": "kerberos"}, "not understood"),
        ({"tls_cert": str(tmp_path / "short")}, "both --tls-cert and --tls-key"),
    ]
    for overrides, message in cases:
        with pytest.raises(AccessConfigError, match=message):
            start(_settings(tmp_path, **overrides))
    assert not (tmp_path / "cp.db").exists()


def test_loopback_peers() -> None:
    assert is_loopback_peer("ipv4:127.0.0.1:50000")
    assert is_loopback_peer("ipv6:[::1]:50000")
    assert is_loopback_peer("unix:/tmp/socket")
    assert not is_loopback_peer("ipv4:10.1.2.3:50000")
    assert not is_loopback_peer("ipv6:[2001:db8::1]:443")
    assert not is_loopback_peer("ipv4:bogus:1")
