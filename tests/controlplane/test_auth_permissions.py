"""The permission table covers every RPC, and a real server with bearer tokens enforces it for
every RPC and every built-in role. Also holds the helpers the other access-control tests use.
"""

from __future__ import annotations

import importlib
import pkgutil
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import modelplane.v1
from controlplane.auth import BUILT_IN_ROLES, PERMISSIONS
from controlplane.auth.permissions import ADMIN, SERVED_ELSEWHERE
from controlplane.server import SERVICE_NAMES
from modelplane import Client
from modelplane.errors import error_info
from tests.controlplane.conftest import RunningControlPlane, start_controlplane

#: principal → (roles, models) of the tokens most tests use.
PEOPLE: dict[str, tuple[list[str], list[str]]] = {
    "vera": (["viewer"], []),
    "dev": (["developer"], []),
    "ann": (["approver", "risk"], []),
    "ada": (["admin"], []),
    "rick": (["risk"], []),
    "sid": (["sidecar"], []),
}
ROLE_OF = {
    "viewer": "vera",
    "developer": "dev",
    "approver": "ann",
    "admin": "ada",
    "risk": "rick",
    "sidecar": "sid",
}


@dataclass
class TokenServer:
    """A control plane with ``--auth tokens:FILE`` and the token of each principal."""

    cp: RunningControlPlane
    tokens: dict[str, str]

    @property
    def address(self) -> str:
        return self.cp.address

    def client(self, who: str, **kw: Any) -> Client:
        """An SDK client holding ``who``'s token."""
        kw.setdefault("timeout", 30)
        return Client(self.address, token=self.tokens[who], **kw)


def write_tokens(path: Path, people: dict[str, tuple[list[str], list[str]]]) -> dict[str, str]:
    """A tokens file granting each principal its roles (on its models); returns the tokens."""
    tokens = {who: f"mp-{who}-{secrets.token_urlsafe(24)}" for who in people}
    entries = []
    for who, (roles, models) in people.items():
        entry: dict[str, Any] = {"token": tokens[who], "principal": who, "roles": roles}
        if models:
            entry["models"] = models
        entries.append(entry)
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return tokens


def start_token_server(
    tmp: Path, people: dict[str, tuple[list[str], list[str]]], **overrides: object
) -> TokenServer:
    """A real control plane on SQLite under ``tmp`` authenticating with a tokens file."""
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = write_tokens(tmp / "tokens.yaml", people)
    cp = start_controlplane(
        tmp, f"sqlite:///{tmp / 'cp.db'}", auth=f"tokens:{tmp / 'tokens.yaml'}", **overrides
    )
    return TokenServer(cp, tokens)


def reason_of(exc: BaseException) -> str:
    """The ErrorInfo reason of an SDK error or a raw RpcError."""
    if isinstance(exc, grpc.RpcError):
        info = error_info(exc)
        return info.reason if info is not None else ""
    return str(getattr(exc, "reason", ""))


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = start_token_server(tmp_path_factory.mktemp("auth"), PEOPLE)
    yield server
    server.cp.handle.stop(0)


def _modelplane_services() -> Iterator[ServiceDescriptor]:
    for info in pkgutil.iter_modules(modelplane.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"modelplane.v1.{info.name}")
            yield from module.DESCRIPTOR.services_by_name.values()


def _methods() -> list[tuple[str, MethodDescriptor]]:
    return [
        (f"/{s.full_name}/{m.name}", m)
        for s in _modelplane_services()
        if s.full_name not in SERVED_ELSEWHERE
        for m in s.methods
    ]


def test_every_rpc_of_every_served_service_is_in_the_table() -> None:
    services = {s.full_name for s in _modelplane_services()}
    assert services >= SERVED_ELSEWHERE, "a service named as served elsewhere no longer exists"
    assert set(SERVICE_NAMES) == services - SERVED_ELSEWHERE
    methods = {name for name, _ in _methods()}
    assert len(methods) >= 40
    assert methods - set(PERMISSIONS) == set(), "RPCs missing from the permission table"
    assert set(PERMISSIONS) - methods == set(), "table entries naming no RPC"
    for name, rule in PERMISSIONS.items():
        assert rule.roles <= set(BUILT_IN_ROLES), name
        assert ADMIN in rule.roles, f"admin may do everything, but not {name}"


def test_the_table_matches_the_role_definitions() -> None:
    """Checked against the roles as documented, not against the table itself."""
    short = {name: name.rsplit("/", 1)[-1] for name in PERMISSIONS}
    reads = {
        n
        for n, m in short.items()
        if m.startswith(("Get", "List", "Download", "Wait", "Watch")) or m == "VerifyVersion"
    }
    developer_extra = {
        "CreateModel",
        "UpdateModel",
        "CreateModelVersion",
        "UpdateModelVersion",
        "UploadBlob",
        "Evaluate",
        "CancelOperation",
        "EvaluateGate",
        "SetAlias",
        "CreateDeployment",
        "UpdateDeployment",
        "StartRollout",
        "PauseRollout",
        "ResumeRollout",
        "AbortRollout",
        "PromoteRollout",
        "RollbackRollout",
        "ReportWindow",
    }

    def allowed(role: str) -> set[str]:
        return {n for n, rule in PERMISSIONS.items() if role in rule.roles}

    assert allowed("viewer") == reads
    assert {short[n] for n in allowed("developer") - reads} == developer_extra
    assert {short[n] for n in allowed("approver") - reads} == {"Approve"}
    assert allowed("admin") == set(PERMISSIONS)
    assert {short[n] for n in allowed("sidecar")} == {
        "GetBlob",
        "DownloadBlob",
        "GetDeployment",
        "WatchDeployment",
        "ReportWindow",
    }
    admin_only = {short[n] for n in set(PERMISSIONS) - allowed("developer") - allowed("approver")}
    assert admin_only == {
        "DeleteModel",
        "ArchiveModelVersion",
        "DeleteAlias",
        "CreatePolicy",
        "UpdatePolicy",
        "DeletePolicy",
        "ExportAuditEvents",
        "CreateCheckpoint",
        "VerifyAudit",
        "DeleteDeployment",
    }


def _call(channel: grpc.Channel, name: str, method: MethodDescriptor, token: str) -> Any:
    """Call ``method`` with an empty request; None on success, else the RpcError."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kw = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    md = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if method.client_streaming and not method.server_streaming:
            channel.stream_unary(name, **kw)(iter(()), metadata=md, timeout=15)
        elif method.server_streaming and not method.client_streaming:
            list(channel.unary_stream(name, **kw)(request_cls(), metadata=md, timeout=15))
        else:
            assert not method.client_streaming and not method.server_streaming, name
            channel.unary_unary(name, **kw)(request_cls(), metadata=md, timeout=15)
    except grpc.RpcError as exc:
        return exc
    return None


@pytest.mark.parametrize("role", [*BUILT_IN_ROLES, "risk"])
def test_every_rpc_for_every_role(token_server: TokenServer, role: str) -> None:
    token = token_server.tokens[ROLE_OF[role]]
    wrong: list[str] = []
    with grpc.insecure_channel(token_server.address) as channel:
        for name, method in _methods():
            rule = PERMISSIONS[name]
            err = _call(channel, name, method, token)
            code = err.code() if err is not None else grpc.StatusCode.OK
            if role in rule.roles:
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    wrong.append(f"{name}: {role} refused with {code.name}: {err.details()}")
                continue
            info = error_info(err) if err is not None else None
            if code is not grpc.StatusCode.PERMISSION_DENIED or info is None:
                wrong.append(f"{name}: {role} got {code.name} instead of PERMISSION_DENIED")
            elif info.reason != "ROLE_REQUIRED" or info.metadata["required_roles"] != ",".join(
                sorted(rule.roles)
            ):
                wrong.append(f"{name}: {role} refused with {info.reason} {dict(info.metadata)}")
    assert wrong == []


def test_every_rpc_refuses_callers_without_credentials(token_server: TokenServer) -> None:
    reasons = set()
    with grpc.insecure_channel(token_server.address) as channel:
        for name, method in _methods():
            err = _call(channel, name, method, "")
            assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED, name
            reasons.add(reason_of(err))
    assert reasons == {"MISSING_CREDENTIALS"}


def test_role_required_names_roles_and_message(token_server: TokenServer) -> None:
    from modelplane.errors import PermissionDenied

    with token_server.client("vera") as viewer, pytest.raises(PermissionDenied) as denied:
        viewer.create_model("m-not-allowed")
    assert denied.value.reason == "ROLE_REQUIRED"
    assert denied.value.metadata["required_roles"] == "admin,developer"
    assert "viewer" in denied.value.message and "developer" in denied.value.message
