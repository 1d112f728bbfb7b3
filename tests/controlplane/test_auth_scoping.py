"""Tokens whose roles hold only on some models: requests about other models are refused with
MODEL_NOT_IN_SCOPE, lists are filtered, and approvals record the roles that hold on the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel, refused
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_evaluation_control import dataset as loop_dataset
from tests.controlplane.test_evaluation_control import register as register_loop
from tests.controlplane.test_governance_evaluation import register


@dataclass
class Scoped:
    server: TokenServer
    a: str
    b: str
    version_a: int
    version_b: int


@pytest.fixture(scope="module")
def scoped(
    tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel
) -> Iterator[Scoped]:
    a, b = unique("a"), unique("b")
    people = {
        "ada": (["admin"], []),
        "dana": (["developer"], [a]),
        "dave": (["developer", "approver"], [a]),
        "sam": (["viewer"], [a]),
        "pat": (["approver", "risk"], [a]),
        "sadie": (["admin"], [a]),
    }
    server = start_token_server(tmp_path_factory.mktemp("scoped"), people)
    with server.client("dave") as dave:
        version_a = register(dave, trained_model, a)
    with server.client("ada") as ada:
        version_b = register(ada, trained_model, b)
    yield Scoped(server, a, b, version_a, version_b)
    server.cp.handle.stop(0)


def test_reads_and_writes_are_limited_to_the_scoped_models(
    scoped: Scoped, trained_model: TrainedModel
) -> None:
    with scoped.server.client("dana") as dana, scoped.server.client("sam") as sam:
        assert dana.get_model(scoped.a).name == f"models/{scoped.a}"
        err = refused(lambda: dana.get_model(scoped.b))
        assert err.metadata["model"] == scoped.b and scoped.a in err.message
        refused(lambda: dana.get_version(scoped.b, scoped.version_b))
        refused(lambda: dana.get_version(scoped.b, "@production"))
        refused(lambda: dana.create_model(unique("c")))
        refused(lambda: sam.list_versions(scoped.b).__next__())
        refused(lambda: sam.model_card(scoped.b, scoped.version_b))
        # Blobs are content-addressed and belong to no model: uploads need only the role.
        v = dana.register_version(
            scoped.a, trained_model.onnx, datasets={"train": trained_model.train}, label="target"
        )
        assert v.created_by == "dana"
        refused(lambda: dana.register_version(scoped.b, trained_model.onnx, capture_env=False))
        assert sam.get_version(scoped.a, int(v.version)).name == v.name
        refused(
            lambda: sam.update_version(scoped.a, int(v.version), description="x"), "ROLE_REQUIRED"
        )


def test_lists_are_filtered_to_the_scoped_models(scoped: Scoped) -> None:
    with scoped.server.client("sam") as sam, scoped.server.client("ada") as ada:
        everything = {m.name for m in ada.list_models()}
        assert {f"models/{scoped.a}", f"models/{scoped.b}"} <= everything
        assert {m.name for m in sam.list_models()} == {f"models/{scoped.a}"}
        events = list(sam.audit_events())
        assert events and all(not e.resource.startswith(f"models/{scoped.b}") for e in events)
        assert any(e.resource.startswith(f"models/{scoped.a}") for e in events)
        assert any(e.resource.startswith(f"models/{scoped.b}") for e in ada.audit_events())
        refused(lambda: list(sam.audit_events(resource=f"models/{scoped.b}")))


def test_operations_of_other_models_are_hidden(scoped: Scoped, trained_model: TrainedModel) -> None:
    with scoped.server.client("dana") as dana, scoped.server.client("ada") as ada:
        mine = dana.evaluate(scoped.a, scoped.version_a, trained_model.holdout, label="target")
        theirs = ada.evaluate(scoped.b, scoped.version_b, trained_model.holdout, label="target")
        assert dana.get_operation(mine.name).target == f"models/{scoped.a}/versions/1"
        refused(lambda: dana.get_operation(theirs.name))
        refused(lambda: dana.wait_operation(theirs.name, timeout=1))
        listed = {o.name for o in dana.list_operations().operations}
        assert mine.name in listed and theirs.name not in listed
        assert theirs.name in {o.name for o in ada.list_operations().operations}
        refused(lambda: dana.list_operations(target=f"models/{scoped.b}/versions/1"))
        dana.operation_result(mine, timeout=120)
        ada.operation_result(theirs, timeout=120)


def test_operations_of_other_models_cannot_be_cancelled_or_waited_on(
    scoped: Scoped, tmp_path: Path
) -> None:
    """The scope is checked before the operation is touched: a refused cancel leaves the
    operation running and records nothing in the audit trail."""
    with scoped.server.client("dana") as dana, scoped.server.client("ada") as ada:
        model_id, version = register_loop(ada, tmp_path, 10**12)
        running = ada.evaluate(model_id, version, loop_dataset(tmp_path), label="target")
        try:
            refused(lambda: dana.cancel_operation(running.name))
            refused(lambda: dana.wait_operation(running.name, timeout=1))
            assert not ada.get_operation(running.name).done
            assert "CancelOperation" not in {
                e.action for e in ada.audit_events(resource=running.name)
            }
        finally:
            assert ada.cancel_operation(running.name).error.reason == "CANCELLED"


def test_approvals_record_the_roles_holding_on_the_model(scoped: Scoped) -> None:
    policy = unique("p")  # approvals are taken only for a governed target
    with scoped.server.client("ada") as ada:
        ada.create_policy(policy, target="production", rules=["true"])
    try:
        with scoped.server.client("pat", principal="mallory") as pat:
            approval = pat.with_roles(["admin"]).approve(
                scoped.a, scoped.version_a, "production", comment="ok"
            )
            assert approval.approver == "pat" and list(approval.roles) == ["approver", "risk"]
            refused(lambda: pat.approve(scoped.b, scoped.version_b, "production"))
        with scoped.server.client("dave") as dave:
            # dave registered version_a himself: separation of duties still holds under tokens.
            refused(lambda: dave.approve(scoped.a, scoped.version_a, "production"), "SELF_APPROVAL")
    finally:
        with scoped.server.client("ada") as ada:
            ada.delete_policy(policy)


def test_a_scoped_admin_cannot_act_on_the_whole_control_plane(scoped: Scoped) -> None:
    with scoped.server.client("sadie") as sadie:
        err = refused(lambda: sadie.create_checkpoint(), "UNSCOPED_ROLE_REQUIRED")
        assert err.metadata["required_roles"] == "admin"
        refused(
            lambda: sadie.create_policy("p", target="production", rules=["true"]),
            "UNSCOPED_ROLE_REQUIRED",
        )
        refused(lambda: sadie.delete_model(scoped.b, force=True))
        assert list(sadie.list_policies()) == []
        assert sadie.public_key().algorithm == "Ed25519"


def test_requests_naming_no_model_need_an_unscoped_grant(scoped: Scoped, tmp_path: Path) -> None:
    import grpc

    from modelplane.v1 import registry_pb2, registry_pb2_grpc

    with grpc.insecure_channel(scoped.server.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        md = (("authorization", f"Bearer {scoped.server.tokens['sam']}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModel(registry_pb2.GetModelRequest(name="policies/x"), metadata=md)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        md_admin = (("authorization", f"Bearer {scoped.server.tokens['ada']}"),)
        with pytest.raises(grpc.RpcError) as invalid:
            stub.GetModel(registry_pb2.GetModelRequest(name="policies/x"), metadata=md_admin)
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_scoped_callers_reach_only_their_models_blobs_and_audit_events(
    scoped: Scoped, trained_model: TrainedModel, tmp_path: Path
) -> None:
    import hashlib
    import uuid

    # A dataset only model b uses, and a blob nothing uses yet.
    import pyarrow as pa
    import pyarrow.parquet as pq

    only_b = tmp_path / "b-only.parquet"
    table = pq.read_table(trained_model.train)
    pq.write_table(table.append_column("note", pa.array([str(uuid.uuid4())] * len(table))), only_b)
    with scoped.server.client("ada") as ada:
        ada.register_version(
            scoped.b, trained_model.onnx, datasets={"holdout": only_b}, label="target"
        )
        loose = ada.upload_blob(f"unused {uuid.uuid4()}".encode(), "text/plain").sha256
    only_b_sha = hashlib.sha256(only_b.read_bytes()).hexdigest()
    with scoped.server.client("sam") as sam, scoped.server.client("dana") as dana:
        events = list(sam.audit_events())
        assert events and all(e.resource.startswith(f"models/{scoped.a}") for e in events)
        for sha in (only_b_sha, loose):
            refused(lambda s=sha: sam.get_blob(s), "BLOB_NOT_IN_SCOPE")
            refused(lambda s=sha: sam.download_blob(s, tmp_path / "x"), "BLOB_NOT_IN_SCOPE")
        assert not (tmp_path / "x").exists()
        # What model a's versions use stays readable, and so does what a caller uploaded.
        artifact = sam.get_version(scoped.a, scoped.version_a).artifact.sha256
        got = sam.download_blob(artifact, tmp_path / "a.onnx").read_bytes()
        assert hashlib.sha256(got).hexdigest() == artifact
        own = dana.upload_blob(f"dana's {uuid.uuid4()}".encode(), "text/plain").sha256
        assert dana.get_blob(own).sha256 == own
    with scoped.server.client("ada") as ada:
        assert ada.get_blob(loose).sha256 == loose
        assert any(e.resource == f"blobs/{loose}" for e in ada.audit_events())
