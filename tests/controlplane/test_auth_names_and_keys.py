"""JWT keys and principal names at the edges: a token whose header names an algorithm the key
cannot verify is UNAUTHENTICATED (never INTERNAL), a key file that is no usable key refuses to
start, a principal name is the whole of the name (a trailing newline is not part of one) and
never one the server acts under, and separation of duties compares names without case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.auth import AccessConfigError
from controlplane.server import start
from modelplane import Client
from modelplane.errors import PermissionDenied, Unauthenticated
from modelplane.server.context import clean_principal, reserved_principal
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_auth_identity import (
    AUDIENCE,
    ISSUER,
    SECRET,
    _claims,
    _jwt_server,
    _settings,
)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def es256(
    tmp_path_factory: pytest.TempPathFactory, p256: ec.EllipticCurvePrivateKey
) -> Iterator[RunningControlPlane]:
    tmp = tmp_path_factory.mktemp("es256")
    (tmp / "public.pem").write_bytes(_pem(p256))
    cp = _jwt_server(tmp, tmp / "public.pem")
    yield cp
    cp.handle.stop(0)


def _call(cp: RunningControlPlane, token: str) -> Any:
    with Client(cp.address, token=token, timeout=10, retries=1) as c:
        return list(c.list_models())


def test_a_header_naming_another_curves_algorithm_is_an_invalid_token(
    es256: RunningControlPlane, p256: ec.EllipticCurvePrivateKey
) -> None:
    assert _call(es256, jwt.encode(_claims(), p256, algorithm="ES256")) == []
    other = ec.generate_private_key(ec.SECP384R1())
    for algorithm, key in (("ES384", other), ("ES512", ec.generate_private_key(ec.SECP521R1()))):
        forged = jwt.encode(_claims(), key, algorithm=algorithm)
        with pytest.raises(Unauthenticated) as refused:
            _call(es256, forged)
        assert refused.value.reason == "INVALID_TOKEN"
    # A P-256 signature relabelled ES384 in the header: the key cannot verify that algorithm.
    good = jwt.encode(_claims(), p256, algorithm="ES256")
    _header, payload, signature = good.split(".")
    relabelled = jwt.utils.base64url_encode(json.dumps({"alg": "ES384", "typ": "JWT"}).encode())
    with pytest.raises(Unauthenticated) as refused:
        _call(es256, f"{relabelled.decode()}.{payload}.{signature}")
    assert refused.value.reason == "INVALID_TOKEN"
    # The server kept serving.
    assert _call(es256, good) == []


def test_key_files_that_are_no_usable_key_refuse_to_start(tmp_path: Path) -> None:
    p256 = _pem(ec.generate_private_key(ec.SECP256R1()))
    jwks = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "a" * 43, "y": "b" * 43}]})
    k1 = ec.generate_private_key(ec.SECP256K1())
    cases = {
        "jwks.json": (jwks.encode(), "JWKS document is not supported"),
        "preamble.pem": (b"issued by the IdP on Monday\n" + p256, "neither a PEM public key"),
        "ssh.pub": (b"ssh-ed25519 " + b"A" * 68 + b" ops@host", "neither a PEM public key"),
        "k1.pem": (_pem(k1), "curve secp256k1 verifies no JWT algorithm"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        settings = _settings(
            tmp_path,
            auth="jwt",
            jwt_key=str(tmp_path / name),
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
        )
        with pytest.raises(AccessConfigError, match=message):
            start(settings)
    assert not (tmp_path / "cp.db").exists()


@pytest.mark.parametrize("name", ["alice\n", "alice\r", " alice", "", "a" * 129])
def test_names_that_are_no_principal(name: str) -> None:
    assert clean_principal(name) is None


def test_ordinary_names_are_principals() -> None:
    for name in ("alice", "ci-bot", "rita@example.com", "svc:deploy+1", "a" * 128):
        assert clean_principal(name) == name
        assert not reserved_principal(name)
    assert all(reserved_principal(n) for n in ("modelplane", "ModelPlane", "system", "SYSTEM"))


def test_a_tokens_file_giving_a_reserved_name_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text(
        "tokens:\n- {token: 0123456789abcdefgh, principal: System, roles: [admin]}\n"
    )
    settings = _settings(tmp_path, auth=f"tokens:{tmp_path / 'tokens.yaml'}")
    with pytest.raises(AccessConfigError, match="'System' is the name the server acts under"):
        start(settings)


@pytest.fixture
def hs256(tmp_path: Path) -> Iterator[RunningControlPlane]:
    (tmp_path / "secret").write_bytes(SECRET)
    cp = _jwt_server(tmp_path, tmp_path / "secret")
    yield cp
    cp.handle.stop(0)


def _token(sub: str, *roles: str) -> str:
    return jwt.encode(_claims(sub=sub, roles=list(roles)), SECRET, algorithm="HS256")


def test_reserved_and_newline_subjects_are_refused(hs256: RunningControlPlane) -> None:
    for sub in ("alice\n", "modelplane", "System"):
        with pytest.raises(Unauthenticated) as refused:
            _call(hs256, _token(sub, "admin"))
        assert refused.value.reason == "INVALID_TOKEN"


def test_an_author_cannot_approve_under_another_case_of_their_name(
    hs256: RunningControlPlane, tmp_path: Path
) -> None:
    model_id = unique()
    path = onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx")
    with Client(hs256.address, token=_token("alice", "developer"), timeout=30) as alice:
        alice.create_model(model_id)
        alice.register_version(model_id, path, capture_env=False)
    with Client(hs256.address, token=_token("ada", "admin"), timeout=30) as ada:
        ada.create_policy(unique("p"), target="production", rules=["true"])
    with Client(hs256.address, token=_token("Alice", "approver"), timeout=30) as other_case:
        with pytest.raises(PermissionDenied) as refused:
            other_case.approve(model_id, 1, "production")
        assert refused.value.reason == "SELF_APPROVAL"
    with Client(hs256.address, token=_token("bob", "approver"), timeout=30) as bob:
        assert bob.approve(model_id, 1, "production").approver == "bob"


def test_two_cases_of_one_approver_are_one_approval(
    hs256: RunningControlPlane, tmp_path: Path
) -> None:
    model_id = unique()
    path = onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx")
    with Client(hs256.address, token=_token("ada", "admin"), timeout=30) as ada:
        ada.create_model(model_id)
        ada.register_version(model_id, path, capture_env=False)
        ada.create_policy(
            unique("p"),
            target="production",
            rules=['size(approvals.filter(a, a.decision == "approve")) >= 2'],
        )
    for sub in ("bob", "BOB"):
        with Client(hs256.address, token=_token(sub, "approver"), timeout=30) as c:
            c.approve(model_id, 1, "production")
    with Client(hs256.address, token=_token("ada", "admin"), timeout=30) as ada:
        decision = ada.evaluate_gate(model_id, 1, "production")
        assert not decision.passed
        with Client(hs256.address, token=_token("carol", "approver"), timeout=30) as carol:
            carol.approve(model_id, 1, "production")
        assert ada.evaluate_gate(model_id, 1, "production").passed


def test_without_access_control_a_caller_may_name_itself_anything_it_likes(
    controlplane: RunningControlPlane,
) -> None:
    # Without access control a name proves nothing: the CLI in the project's images runs as
    # the user modelplane, and keeps that name.
    with grpc.insecure_channel(controlplane.address) as channel:
        from modelplane.v1 import registry_pb2, registry_pb2_grpc

        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        model_id = unique()
        stub.CreateModel(
            registry_pb2.CreateModelRequest(model_id=model_id),
            metadata=[("x-modelplane-principal", "modelplane")],
            timeout=10,
        )
        got = stub.GetModel(registry_pb2.GetModelRequest(name=f"models/{model_id}"), timeout=10)
    assert got.created_by == "modelplane"
