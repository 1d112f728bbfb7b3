"""JWTs scoped to models: the models claim (``--jwt-models-claim``, default ``models``, dotted for
a nested one) limits a token's roles to the models it lists, as a tokens file's ``models`` does;
a token without it acts on every model, and one whose claim cannot be used is refused, never
let act on every model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from controlplane.auth.identity import JwtAuthenticator
from modelplane import Client
from modelplane.errors import Unauthenticated
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, refused, serve_refused
from tests.controlplane.test_auth_identity import SECRET, _claims, _hs, _jwt_server


@pytest.fixture(scope="module")
def jwt_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    tmp = tmp_path_factory.mktemp("jwt-models")
    (tmp / "secret").write_bytes(SECRET)
    cp = _jwt_server(tmp, tmp / "secret")
    yield cp
    cp.handle.stop(0)


@pytest.fixture(scope="module")
def two_models(jwt_cp: RunningControlPlane) -> tuple[str, str]:
    a, b = unique("a"), unique("b")
    with Client(jwt_cp.address, token=_hs(sub="ada", roles=["admin"]), timeout=30) as ada:
        ada.create_model(a)
        ada.create_model(b)
    return a, b


def _client(cp: RunningControlPlane, **claims: Any) -> Client:
    return Client(cp.address, token=_hs(**claims), timeout=30)


def test_a_models_claim_limits_the_roles_to_its_models(
    jwt_cp: RunningControlPlane, two_models: tuple[str, str]
) -> None:
    a, b = two_models
    with _client(jwt_cp, sub="dana", roles=["developer"], models=[a]) as dana:
        assert dana.get_model(a).name == f"models/{a}"
        assert dana.update_model(a, description="mine").description == "mine"
        err = refused(lambda: dana.get_model(b))
        assert err.metadata["model"] == b
        refused(lambda: dana.update_model(b, description="not mine"))
        assert {m.name for m in dana.list_models()} == {f"models/{a}"}
        # Creating a model names one outside the claim too.
        refused(lambda: dana.create_model(unique("c")))
    with _client(jwt_cp, sub="ada", roles=["admin"]) as ada:
        assert ada.get_model(b).description == ""


def test_a_token_without_the_claim_acts_on_every_model(
    jwt_cp: RunningControlPlane, two_models: tuple[str, str]
) -> None:
    a, b = two_models
    with _client(jwt_cp, sub="vic", roles=["viewer"]) as vic:
        assert {f"models/{a}", f"models/{b}"} <= {m.name for m in vic.list_models()}
        assert vic.get_model(b).name == f"models/{b}"


def test_a_scoped_admin_cannot_act_on_the_whole_control_plane(
    jwt_cp: RunningControlPlane, two_models: tuple[str, str]
) -> None:
    a, _ = two_models
    with _client(jwt_cp, sub="sadie", roles=["admin"], models=[a]) as sadie:
        refused(lambda: sadie.create_checkpoint(), "UNSCOPED_ROLE_REQUIRED")


@pytest.mark.parametrize(
    ("models", "why"),
    [
        ([], "empty"),
        ("a-model", "list of model ids"),
        (None, "list of model ids"),
        ({"ids": ["x"]}, "list of model ids"),
        (["ok-model", 7], "list of model ids"),
        (["Not A Model"], "invalid model ids 'Not A Model'"),
    ],
    ids=["empty", "string", "null", "object", "not-text", "invalid-id"],
)
def test_a_claim_that_cannot_be_used_is_refused(
    jwt_cp: RunningControlPlane, models: Any, why: str
) -> None:
    """Read as no limit, such a claim would widen the token to every model."""
    claims = _claims(sub="dana")
    claims["models"] = models  # _claims drops a None, and the null is one of the cases
    claims_token = jwt.encode(claims, SECRET, algorithm="HS256")
    with (
        Client(jwt_cp.address, token=claims_token, timeout=30) as c,
        pytest.raises(Unauthenticated) as refused,
    ):
        c.list_models().__next__()
    assert refused.value.reason == "INVALID_CLAIM", refused.value
    assert refused.value.metadata["claim"] == "models"
    assert "'models' claim" in refused.value.message and why in refused.value.message


def test_a_claim_of_more_than_1000_models_is_refused(tmp_path: Path) -> None:
    """As a tokens file's ``models``. Checked on the authenticator itself: such a token is
    larger than the metadata gRPC accepts by default (8 KiB), which refuses it at random."""
    (tmp_path / "secret").write_bytes(SECRET)
    authenticate = JwtAuthenticator.from_key_file(
        tmp_path / "secret", "https://issuer.test", "modelplane-test"
    )
    many = [f"m{i}" for i in range(1001)]

    def bearer(models: list[str]) -> dict[str, str]:
        return {"authorization": f"Bearer {_hs(sub='dana', models=models)}"}

    with pytest.raises(Unauthenticated) as refused:
        authenticate(bearer(many), None)  # type: ignore[arg-type]
    assert refused.value.reason == "INVALID_CLAIM"
    assert "more than 1000 models" in refused.value.message
    accepted = authenticate(bearer(many[:1000]), None)  # type: ignore[arg-type]
    assert len(accepted.grants[0].models) == 1000


def test_a_nested_models_claim(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(SECRET)
    cp = _jwt_server(tmp_path, tmp_path / "secret", jwt_models_claim="modelplane.models")
    try:
        a, b = unique("a"), unique("b")
        with _client(cp, sub="ada", roles=["admin"]) as ada:
            ada.create_model(a)
            ada.create_model(b)
        with _client(cp, sub="vera", roles=["viewer"], modelplane={"models": [a]}) as vera:
            refused(lambda: vera.get_model(b))
            assert vera.get_model(a).name == f"models/{a}"
        # The top-level claim is not the one configured: that token acts on every model.
        with _client(cp, sub="vic", roles=["viewer"], models=[a]) as vic:
            assert vic.get_model(b).name == f"models/{b}"
        with (
            _client(cp, sub="eve", roles=["viewer"], modelplane="models") as eve,
            pytest.raises(Unauthenticated) as unusable,
        ):
            eve.get_model(b)
        assert unusable.value.reason == "INVALID_CLAIM"
        assert unusable.value.metadata["claim"] == "modelplane.models"
    finally:
        cp.handle.stop(0)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_serve_takes_the_claim_from_its_option_and_environment(tmp_path: Path, how: str) -> None:
    """A claim path naming no claim is refused at start, which shows the setting arrives."""
    (tmp_path / "secret").write_bytes(SECRET)
    jwt_options = ["--auth", "jwt", "--jwt-key", str(tmp_path / "secret")]
    jwt_options += ["--jwt-issuer", "https://issuer.test", "--jwt-audience", "modelplane-test"]
    if how == "option":
        result = serve_refused(tmp_path, *jwt_options, "--jwt-models-claim", ".")
    else:
        env = {"MODELPLANE_JWT_MODELS_CLAIM": "."}
        result = serve_refused(tmp_path, *jwt_options, env=env)
    assert result.returncode == 2, result.stderr
    assert "--jwt-models-claim '.' names no claim" in result.stderr
    assert "Traceback" not in result.stderr
