"""Roles a client claims (``--roles``, ``Client.with_roles``, the ``x-modelplane-roles``
metadata) are refused when malformed or too many, by the SDK, the CLI and a control plane
without access control, never dropped; a control plane with tokens still ignores them. Also
the SELF_APPROVAL message naming the version's creator as recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.cli._main import main
from modelplane.errors import InvalidArgument, PermissionDenied, error_info
from modelplane.v1 import governance_pb2, governance_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_request_id_reuse import versions

NOWHERE = "127.0.0.1:1"
PATTERN = "^[a-z][a-z0-9_.-]{0,62}$"
MALFORMED = ["risk officer", "1risk", "risk!", "-risk", "r" * 64, "risk/ops"]
#: 33 distinct role names.
TOO_MANY = [f"r{i}" for i in range(33)]


def governed(cp: RunningControlPlane, tmp: Path) -> tuple[str, int, str]:
    """A model of alice's with a version, and a target a policy governs."""
    target = unique("prod")
    with cp.client("alice") as alice:
        model_id, (v1,) = versions(alice, tmp, count=1)
        alice.create_policy(unique("p"), target=target, rules=["true"])
    return model_id, v1, target


def raw_approve(
    address: str, model_id: str, version: int, target: str, metadata: list[tuple[str, str]]
) -> governance_pb2.Approval:
    """Approve with exactly ``metadata``, past the SDK's own checks."""
    with grpc.insecure_channel(address) as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        request = governance_pb2.ApproveRequest(
            name=f"models/{model_id}/versions/{version}", target=target, decision="approve"
        )
        result: governance_pb2.Approval = stub.Approve(request, metadata=metadata, timeout=30)
        return result


def refused_roles(exc: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The reason and metadata of an INVALID_ARGUMENT the server answered."""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    info = error_info(exc)
    assert info is not None
    return info.reason, dict(info.metadata)


# A control plane without access control -----------------------------------------------------


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_claimed_role_is_refused_and_nothing_is_recorded(
    controlplane: RunningControlPlane, tmp_path: Path, bad: str
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        raw_approve(
            controlplane.address,
            model_id,
            v1,
            target,
            [("x-modelplane-principal", "zoe"), ("x-modelplane-roles", f"risk,{bad}")],
        )
    reason, metadata = refused_roles(err.value)
    assert reason == "INVALID_ROLES"
    assert metadata == {"field": "roles", "invalid_roles": bad}
    message = err.value.details()
    assert repr(bad) in message and "x-modelplane-roles" in message
    assert PATTERN in message and "at most 32" in message
    with controlplane.client("bob") as bob:
        assert bob.list_approvals(model_id, v1) == []
        assert not [e for e in bob.audit_events() if e.action == "Approve"]


def test_every_malformed_name_is_named_and_a_long_one_is_cut(
    controlplane: RunningControlPlane,
) -> None:
    long = "x" + "!" * 500
    with grpc.insecure_channel(controlplane.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            # Any call, not approvals only: the server takes the caller's roles for each.
            stub.ListModels(
                registry_pb2.ListModelsRequest(),
                metadata=[("x-modelplane-roles", f"Risk Officer,ok,{long},a b")],
                timeout=30,
            )
    reason, metadata = refused_roles(err.value)
    assert reason == "INVALID_ROLES"
    cut = long[:64] + "..."
    assert metadata["invalid_roles"] == f"Risk Officer,{cut},a b"
    assert "claimed roles 'Risk Officer'" in err.value.details()
    assert "!" * 100 not in err.value.details()


def test_more_than_32_claimed_roles_are_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        raw_approve(
            controlplane.address,
            model_id,
            v1,
            target,
            [("x-modelplane-principal", "zoe"), ("x-modelplane-roles", ",".join(TOO_MANY))],
        )
    reason, metadata = refused_roles(err.value)
    assert (reason, metadata) == ("INVALID_ROLES", {"field": "roles", "count": "33"})
    assert "33 roles claimed" in err.value.details() and "at most 32" in err.value.details()
    with controlplane.client("bob") as bob:
        assert bob.list_approvals(model_id, v1) == []


def test_claimed_roles_are_still_stripped_lowercased_and_counted_once(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    # 32 distinct names (risk and 31 others), each given twice in two cases, with blanks and
    # empty entries.
    names = ["risk", *(f"r{i}" for i in range(31))]
    text = ",".join(["", *(f" {n.upper()} " for n in names), *names, " "])
    approval = raw_approve(
        controlplane.address,
        model_id,
        v1,
        target,
        [("x-modelplane-principal", "zoe"), ("x-modelplane-roles", text)],
    )
    assert list(approval.roles) == sorted(names)


def test_no_roles_and_an_empty_list_still_work(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    with controlplane.client("zoe") as zoe:
        assert list(zoe.with_roles([]).approve(model_id, v1, target).roles) == []
    approval = raw_approve(
        controlplane.address,
        model_id,
        v1,
        target,
        [("x-modelplane-principal", "yan"), ("x-modelplane-roles", " , ")],
    )
    assert list(approval.roles) == []


# The SDK ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", MALFORMED)
def test_with_roles_refuses_a_malformed_name_before_calling(bad: str) -> None:
    with Client(NOWHERE, principal="zoe") as c, pytest.raises(InvalidArgument) as err:
        c.with_roles(["risk", bad])
    assert err.value.reason == "INVALID_ROLES"
    assert err.value.metadata == {"field": "roles", "invalid_roles": bad}
    assert repr(bad) in err.value.message and PATTERN in err.value.message
    assert "at most 32" in err.value.message


def test_with_roles_refuses_more_than_32_and_a_bare_string() -> None:
    with Client(NOWHERE, principal="zoe") as c:
        with pytest.raises(InvalidArgument) as err:
            c.with_roles(TOO_MANY)
        assert err.value.reason == "INVALID_ROLES" and err.value.metadata["count"] == "33"
        with pytest.raises(TypeError):
            c.with_roles("risk")
        # 32 distinct names, in two cases, are 32.
        c.with_roles([*TOO_MANY[:32], *(n.upper() for n in TOO_MANY[:32])])


def test_with_roles_sends_names_stripped_and_lowercased(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    with controlplane.client("zoe") as zoe:
        approval = zoe.with_roles([" Risk ", "", "ML-lead", "risk"]).approve(model_id, v1, target)
    assert list(approval.roles) == ["ml-lead", "risk"]


# The CLI ----------------------------------------------------------------------------------


def test_cli_refuses_a_malformed_role_before_calling(
    controlplane: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    code = main(
        [
            *("--server", controlplane.address, "--as", "zoe", "--roles", "risk officer"),
            *("approve", model_id, str(v1), "--target", target),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "'risk officer' is not a role name" in err and PATTERN in err
    with controlplane.client("bob") as bob:
        assert bob.list_approvals(model_id, v1) == []


def test_cli_refuses_too_many_roles_and_a_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--server", NOWHERE, "--timeout", "2", "approve", "fraud", "2", "--target", "prod"]
    assert main(["--roles", ",".join(TOO_MANY), *argv]) == 2
    assert "33 roles claimed" in capsys.readouterr().err
    monkeypatch.setenv("MODELPLANE_ROLES", "risk,Risk Officer")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'Risk Officer' is not a role name" in err and "MODELPLANE_ROLES" in err


def test_cli_roles_are_stripped_and_lowercased(
    controlplane: RunningControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id, v1, target = governed(controlplane, tmp_path)
    base = ["--server", controlplane.address, "--output", "json"]
    approve = ["approve", model_id, str(v1), "--target", target]
    assert main([*base, "--as", "zoe", "--roles", " Risk ,ML-lead,", *approve]) == 0
    monkeypatch.setenv("MODELPLANE_ROLES", "Ops")
    assert main([*base, "--as", "yan", *approve]) == 0
    capsys.readouterr()
    with controlplane.client("bob") as bob:
        roles = {a.approver: list(a.roles) for a in bob.list_approvals(model_id, v1)}
    assert roles == {"zoe": ["ml-lead", "risk"], "yan": ["ops"]}


# A control plane with tokens --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    people = {
        "alice": (["developer"], []),
        "Alice": (["approver"], []),
        "ann": (["approver", "risk"], []),
        "ada": (["admin"], []),
    }
    server = start_token_server(tmp_path_factory.mktemp("claimed"), people)
    yield server
    server.cp.handle.stop(0)


def test_a_server_with_tokens_ignores_claimed_roles_even_malformed_ones(
    tokens: TokenServer, tmp_path: Path
) -> None:
    target = unique("prod")
    with tokens.client("alice") as alice:
        model_id, (v1,) = versions(alice, tmp_path, count=1)
    with tokens.client("ada") as ada:
        ada.create_policy(unique("p"), target=target, rules=["true"])
    for claimed in ("risk officer,admin", ",".join(TOO_MANY)):
        approval = raw_approve(
            tokens.address,
            model_id,
            v1,
            target,
            [
                ("authorization", f"Bearer {tokens.tokens['ann']}"),
                ("x-modelplane-principal", "mallory"),
                ("x-modelplane-roles", claimed),
            ],
        )
        assert approval.approver == "ann" and list(approval.roles) == ["approver", "risk"]


def test_self_approval_names_the_creator_as_recorded(
    tokens: TokenServer, controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with tokens.client("alice") as alice:
        model_id, (v1,) = versions(alice, tmp_path, count=1)
    with tokens.client("Alice") as other_case, pytest.raises(PermissionDenied) as err:
        other_case.approve(model_id, v1, "production")
    assert err.value.reason == "SELF_APPROVAL"
    name = f"models/{model_id}/versions/{v1}"
    assert err.value.message == (
        f"Alice is alice, who created {name} (names compare without case), and cannot approve "
        "it (separation of duties); ask someone else"
    )
    # The same name as recorded: no word of case.
    with controlplane.client("alice") as same:
        own_id, (own,) = versions(same, tmp_path, count=1)
        with pytest.raises(PermissionDenied) as err:
            same.approve(own_id, own, "production")
    assert err.value.message == (
        f"alice created models/{own_id}/versions/{own} and cannot approve it (separation of "
        "duties); ask someone else"
    )
