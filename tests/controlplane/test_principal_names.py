"""Principal names a client gives a control plane without access control: a name that is not
one (README: 1-128 ASCII letters, digits and ``._@:+-``) is refused, not recorded as ``anonymous``;
naming none is ``anonymous``; with access control on the token names the caller and the
principal metadata is ignored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplane import Client
from modelplane.errors import InvalidArgument, Unauthenticated
from modelplane.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_auth_permissions import (
    TokenServer,
    reason_of,
    start_token_server,
)

RULE = "1-128 ASCII letters, digits and ._@:+-"


@pytest.fixture(scope="module")
def open_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    """A control plane without access control (loopback)."""
    tmp = tmp_path_factory.mktemp("names")
    cp = start_controlplane(tmp, f"sqlite:///{tmp / 'cp.db'}")
    yield cp
    cp.handle.stop(0)


@pytest.fixture(scope="module")
def auth_none_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    """A control plane with ``--auth none``: principal and roles are the client's word."""
    tmp = tmp_path_factory.mktemp("names-none")
    cp = start_controlplane(tmp, f"sqlite:///{tmp / 'cp.db'}", auth="none")
    yield cp
    cp.handle.stop(0)


def _model_ids(address: str) -> set[str]:
    with Client(address, timeout=30) as c:
        return {m.name.removeprefix("models/") for m in c.list_models()}


@pytest.mark.parametrize(
    "principal",
    ["bad name!", "x" * 129, "x" * 200, "a/b", "semi;colon", "quote'd", "dollar$"],
)
@pytest.mark.parametrize("server", ["open_cp", "auth_none_cp"])
def test_a_name_that_is_not_a_principal_name_is_refused(
    request: pytest.FixtureRequest, server: str, principal: str
) -> None:
    cp: RunningControlPlane = request.getfixturevalue(server)
    model_id = unique()
    with (
        Client(cp.address, principal=principal, timeout=30) as c,
        pytest.raises(InvalidArgument) as err,
    ):
        c.create_model(model_id)
    assert err.value.reason == "INVALID_METADATA"
    assert err.value.metadata["field"] == "principal"
    assert RULE in err.value.message and "x-modelplane-principal" in err.value.message
    if len(principal) <= 128:
        assert repr(principal) in err.value.message
    else:
        assert f"of {len(principal)} characters" in err.value.message
    assert model_id not in _model_ids(cp.address)


def test_reads_are_refused_too_not_served_as_anonymous(open_cp: RunningControlPlane) -> None:
    with (
        Client(open_cp.address, principal="bad name!", timeout=30) as c,
        pytest.raises(InvalidArgument),
    ):
        list(c.list_models())


@pytest.mark.parametrize(
    "principal", ["a", "x" * 128, "ci.bot_1@corp:x+y-z", "Alice", "modelplane", "sidecar-fraud"]
)
def test_a_principal_name_is_recorded_as_given(
    open_cp: RunningControlPlane, principal: str
) -> None:
    with Client(open_cp.address, principal=principal, timeout=30) as c:
        model = c.create_model(unique())
    assert model.created_by == principal


def test_naming_no_principal_is_anonymous(open_cp: RunningControlPlane) -> None:
    with Client(open_cp.address, timeout=30) as c:
        assert c.create_model(unique()).created_by == "anonymous"
    # An empty value names nobody either.
    with grpc.insecure_channel(open_cp.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        model = stub.CreateModel(
            registry_pb2.CreateModelRequest(model_id=unique()),
            metadata=[("x-modelplane-principal", "")],
            timeout=30,
        )
    assert model.created_by == "anonymous"


def test_health_checks_need_no_usable_principal(open_cp: RunningControlPlane) -> None:
    with grpc.insecure_channel(open_cp.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(),
            metadata=[("x-modelplane-principal", "bad name!")],
            timeout=30,
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_with_access_control_the_token_names_the_caller_whatever_principal_is_sent(
    tmp_path: Path,
) -> None:
    server: TokenServer = start_token_server(tmp_path, {"ci-bot": (["developer"], [])})
    try:
        with server.client("ci-bot", principal="bad name!") as c:
            assert c.create_model(unique()).created_by == "ci-bot"
        with (
            Client(server.address, principal="bad name!", token="", timeout=30) as c,
            pytest.raises(Unauthenticated) as refused,
        ):
            list(c.list_models())
        assert reason_of(refused.value) == "MISSING_CREDENTIALS"
    finally:
        server.cp.handle.stop(0)


@pytest.mark.parametrize("name", ["john doe", "josé", "a" * 129])
def test_the_cli_refuses_a_principal_name_before_sending_it(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelplane.cli import main

    assert main(["--server", "127.0.0.1:1", "--as", name, "models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: (INVALID_METADATA) --as ") and err.count("\n") == 1
    assert "is not a principal name" in err or "gRPC metadata cannot carry" in err
    monkeypatch.setenv("MODELPLANE_PRINCIPAL", name)
    assert main(["--server", "127.0.0.1:1", "models", "list"]) == 2
    assert "MODELPLANE_PRINCIPAL" in capsys.readouterr().err


def test_an_os_user_that_is_no_principal_name_is_anonymous(
    open_cp: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelplane.cli import main

    monkeypatch.delenv("MODELPLANE_PRINCIPAL", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "john doe")
    name = unique()
    assert main(["--server", open_cp.address, "models", "create", name]) == 0
    with open_cp.client() as c:
        assert c.get_model(name).created_by == "anonymous"
