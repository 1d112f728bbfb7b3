"""Grants scoped to some models cover the deployments of those models: a sidecar token for
``fraud`` follows, reports on and downloads for ``fraud``'s deployments only, and a developer
scoped to a model runs rollouts of its deployments only. A deployment of another model and
one that does not exist get the same refusal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.auth.permissions import PERMISSIONS
from controlplane.auth.policy import PermissionPolicy
from modelplane.errors import Aborted, NotFound, PermissionDenied
from modelplane.server.context import Grant, RequestContext
from modelplane.testing.onnx_models import mlp, save
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import refused
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_deployments_api import arm


@dataclass
class Two:
    server: TokenServer
    a: str  # model and deployment the scoped tokens hold
    b: str  # another model and its deployment


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    tmp = tmp_path_factory.mktemp("deploy-scoped")
    a, b = unique("a"), unique("b")
    people = {
        "ada": (["admin"], []),
        "dana": (["developer"], [a]),
        "sid": (["sidecar"], [a]),
        "sam": (["sidecar"], []),
        "pat": (["approver"], [a]),
    }
    server = start_token_server(tmp, people)
    with server.client("ada") as ada:
        for first, name in ((0, a), (2, b)):  # distinct artifacts
            ada.create_model(name)
            for seed in (first, first + 1):
                path = save(mlp(8, (16,), 2, seed=seed), tmp / f"{name}-{seed}.onnx")
                ada.register_version(name, path, capture_env=False)
        ada.create_deployment(b, model=b, champion_version=1)
    yield Two(server, a, b)
    server.cp.handle.stop(0)


def test_a_scoped_developer_runs_its_models_deployments_only(two: Two) -> None:
    with two.server.client("dana") as dana:
        refused(lambda: dana.create_deployment(unique("d"), model=two.b, champion_version=1))
        made = dana.create_deployment(two.a, model=two.a, champion_version=1)
        assert made.model == f"models/{two.a}"
        assert dana.get_deployment(two.a).champion_version == 1
        assert dana.update_deployment(two.a, description="scored").description == "scored"
        assert dana.start_rollout(two.a, 2, strategy="canary").rollout.candidate_version == 2
        assert list(dana.list_rollout_events(two.a))
        assert dana.abort_rollout(two.a, reason="done").champion_version == 1
        assert [d.name for d in dana.list_deployments()] == [f"deployments/{two.a}"]

        other = refused(lambda: dana.get_deployment(two.b))
        refused(lambda: dana.update_deployment(two.b, description="mine now"))
        refused(lambda: dana.start_rollout(two.b, 2, strategy="canary"))
        refused(lambda: list(dana.list_rollout_events(two.b)))
        # A deployment that does not exist is refused alike, and neither answer names the
        # model the other deployment serves.
        missing = refused(lambda: dana.get_deployment(unique("nothing")))
        for err in (other, missing):
            assert two.b not in err.message.replace(f"deployments/{two.b}", "")
        assert other.metadata["deployment"] == f"deployments/{two.b}"
    with two.server.client("ada") as ada:  # nothing changed on the other deployment
        kept = ada.get_deployment(two.b)
        assert kept.description == "" and not kept.HasField("rollout")
        with pytest.raises(NotFound):  # an unscoped caller still hears NOT_FOUND
            ada.get_deployment(unique("nothing"))


def test_an_update_naming_its_own_model_cannot_reach_another_deployment(two: Two) -> None:
    """The deployment named decides, not a ``model`` field the caller fills in."""
    from modelplane.v1 import deployments_pb2_grpc

    with grpc.insecure_channel(two.server.address) as channel:
        stub = deployments_pb2_grpc.DeploymentServiceStub(channel)
        request = pb.UpdateDeploymentRequest(
            deployment=pb.Deployment(
                name=f"deployments/{two.b}", model=f"models/{two.a}", description="x"
            )
        )
        request.update_mask.paths.append("description")
        md = (("authorization", f"Bearer {two.server.tokens['dana']}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.UpdateDeployment(request, metadata=md, timeout=30)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_scoped_sidecar_token_follows_and_reports_on_its_models_deployments_only(
    two: Two, tmp_path: Path
) -> None:
    with two.server.client("ada") as ada:
        if not _exists(ada, two.a):
            ada.create_deployment(two.a, model=two.a, champion_version=1)
        b_artifact = ada.get_version(two.b, 1).artifact.sha256
    with two.server.client("sid") as sid:
        state = next(iter(sid.watch_deployment(two.a, replica="r1", timeout=10)))
        assert state.model == f"models/{two.a}"
        answer = sid.report_window(two.a, replica="r1", sequence=1, arms=[arm("champion", 1, 5)])
        assert answer.accepted
        assert sid.get_deployment(two.a).name == f"deployments/{two.a}"
        mine = sid.download_blob(state.versions[0].artifact_sha256, tmp_path / "a.onnx")
        assert mine.stat().st_size > 0

        refused(lambda: next(iter(sid.watch_deployment(two.b, replica="r1", timeout=10))))
        refused(
            lambda: sid.report_window(
                two.b, replica="r1", sequence=1, arms=[arm("champion", 1, 5, errors=5)]
            )
        )
        refused(lambda: sid.get_deployment(two.b))
        with pytest.raises(PermissionDenied) as blob:
            sid.download_blob(b_artifact, tmp_path / "b.onnx")
        assert blob.value.reason == "BLOB_NOT_IN_SCOPE"
    with two.server.client("ada") as ada:  # the refused report left no evidence behind
        assert not ada.get_deployment(two.b).HasField("rollout")
    with two.server.client("sam") as sam:  # an unscoped sidecar token follows every one
        assert next(iter(sam.watch_deployment(two.b, replica="r1", timeout=10))).model


def test_a_scoped_developer_gates_and_creates_a_governed_deployment(two: Two) -> None:
    """A gate's target may name a deployment that does not exist yet: the version names the
    model, so scoped callers gate, approve and list decisions for it, then create it."""
    target = f"deployments/{unique('gov')}"
    with two.server.client("ada") as ada:
        ada.create_policy(unique("p"), target=target, rules=["true"])
    with two.server.client("dana") as dana, two.server.client("pat") as pat:
        assert pat.approve(two.a, 1, target).decision == "approve"
        assert dana.evaluate_gate(two.a, 1, target).passed
        assert [d.passed for d in dana.list_gate_decisions(two.a, 1, target=target)] == [True]
        made = dana.create_deployment(target.split("/")[1], model=two.a, champion_version=1)
        assert made.model == f"models/{two.a}"
        # The version still decides: a gate of another model's version is refused.
        refused(lambda: dana.evaluate_gate(two.b, 1, target))


def test_a_watch_ends_when_its_deployment_is_created_again_for_another_model(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scope is checked when a watch opens; a deployment deleted and created again for another
    model ends the stream, so the watcher is authorized again (for the same model, the stream
    sends the new deployment's state at once)."""
    import threading
    import time

    import controlplane.services.deployments as service

    name = unique("shared")
    real_state = service.DeploymentService.state
    reads = {"n": 0}

    def state(self: Any, deployment: str) -> Any:
        if deployment == f"deployments/{name}":
            reads["n"] += 1
            if reads["n"] == 2:  # the watcher's first re-read waits for the re-creation
                recreated.wait(30)
        return real_state(self, deployment)

    recreated = threading.Event()
    monkeypatch.setattr(service.DeploymentService, "state", state)
    with two.server.client("ada") as ada, two.server.client("sid") as sid:
        ada.create_deployment(name, model=two.a, champion_version=1)
        stream = iter(sid.watch_deployment(name, replica="r1", timeout=20))
        assert next(stream).model == f"models/{two.a}"

        def recreate() -> None:
            time.sleep(0.2)
            ada.delete_deployment(name)
            ada.create_deployment(name, model=two.b, champion_version=1)
            recreated.set()

        worker = threading.Thread(target=recreate)
        worker.start()
        rest = []
        with pytest.raises(Aborted) as ended:
            for state in stream:
                rest.append(state)
        worker.join()
    assert [s.model for s in rest] == []
    assert ended.value.reason == "DEPLOYMENT_RECREATED"


def _exists(client: Any, deployment: str) -> bool:
    try:
        client.get_deployment(deployment)
    except NotFound:
        return False
    return True


def _policy(found: dict[str, str]) -> tuple[PermissionPolicy, list[str]]:
    looked_up: list[str] = []

    def lookup(deployment: str) -> str | None:
        looked_up.append(deployment)
        return found.get(deployment)

    policy = PermissionPolicy(PERMISSIONS)
    policy.find_deployments_with(lookup)
    return policy, looked_up


_GET = "/modelplane.v1.DeploymentService/GetDeployment"
_UPDATE = "/modelplane.v1.DeploymentService/UpdateDeployment"


def test_grants_mixing_scopes_read_everywhere_and_write_on_their_models_only() -> None:
    policy, _ = _policy({"d-a": "a", "d-b": "b"})
    ctx = RequestContext(
        principal="mia", grants=(Grant(("viewer",)), Grant(("developer",), ("a",)))
    )
    got = policy(ctx, _GET, pb.GetDeploymentRequest(name="deployments/d-b"))
    assert got.context.roles == ("viewer",)
    # A deployment that does not exist is for the unscoped viewer grant to hear about.
    assert policy(ctx, _GET, pb.GetDeploymentRequest(name="deployments/none")).context.roles
    update = pb.UpdateDeploymentRequest(deployment=pb.Deployment(name="deployments/d-a"))
    assert "developer" in policy(ctx, _UPDATE, update).context.roles
    update.deployment.name = "deployments/d-b"
    with pytest.raises(PermissionDenied) as denied:
        policy(ctx, _UPDATE, update)
    assert denied.value.reason == "MODEL_NOT_IN_SCOPE"


def test_unscoped_callers_cost_no_lookup() -> None:
    policy, looked_up = _policy({"d-a": "a"})
    ctx = RequestContext(principal="ada", grants=(Grant(("admin",)),))
    policy(ctx, _GET, pb.GetDeploymentRequest(name="deployments/d-a"))
    assert looked_up == []
    scoped = RequestContext(principal="sid", grants=(Grant(("sidecar",), ("a",)),))
    policy(scoped, _GET, pb.GetDeploymentRequest(name="deployments/d-a"))
    assert looked_up == ["d-a"]


def test_a_create_is_about_the_model_it_names_not_its_new_name() -> None:
    policy, looked_up = _policy({"taken": "b"})
    ctx = RequestContext(principal="dana", grants=(Grant(("developer",), ("a",)),))
    create = pb.CreateDeploymentRequest(
        deployment_id="new",
        deployment=pb.Deployment(name="deployments/taken", model="models/a"),
    )
    assert (
        "developer"
        in policy(ctx, "/modelplane.v1.DeploymentService/CreateDeployment", create).context.roles
    )
    assert looked_up == []


def test_without_a_lookup_scoped_grants_reach_no_deployment() -> None:
    policy = PermissionPolicy(PERMISSIONS)
    ctx = RequestContext(principal="dana", grants=(Grant(("developer",), ("a",)),))
    update = pb.UpdateDeploymentRequest(
        deployment=pb.Deployment(name="deployments/d-b", model="models/a")
    )
    with pytest.raises(PermissionDenied) as denied:
        policy(ctx, _UPDATE, update)
    assert denied.value.reason == "MODEL_NOT_IN_SCOPE"


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "é" * 10, "A_B", "x" * 300])
def test_a_scoped_caller_naming_no_possible_deployment_is_refused_on_each_backend(
    db_url: str, tmp_path: Path, name: str
) -> None:
    """A name no deployment can have is looked up in no database (PostgreSQL refuses text
    holding NUL): the scoped caller gets the refusal a missing deployment gets, never
    INTERNAL, and the server serves on."""
    from modelplane.errors import error_info
    from modelplane.v1 import deployments_pb2_grpc
    from tests.controlplane.conftest import refused, start_controlplane
    from tests.controlplane.test_auth_permissions import write_tokens

    model = unique("m")
    tokens = write_tokens(
        tmp_path / "tokens.yaml", {"dana": (["developer"], [model]), "sid": (["sidecar"], [model])}
    )
    cp = start_controlplane(tmp_path, db_url, auth=f"tokens:{tmp_path / 'tokens.yaml'}")
    try:
        with grpc.insecure_channel(cp.address) as channel:
            stub = deployments_pb2_grpc.DeploymentServiceStub(channel)
            for who in ("dana", "sid"):
                md = (("authorization", f"Bearer {tokens[who]}"),)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GetDeployment(
                        pb.GetDeploymentRequest(name=f"deployments/{name}"), metadata=md, timeout=30
                    )
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
                info = error_info(refused.value)
                assert info is not None and info.reason == "MODEL_NOT_IN_SCOPE"
            md = (("authorization", f"Bearer {tokens['dana']}"),)
            listed = stub.ListDeployments(pb.ListDeploymentsRequest(), metadata=md, timeout=30)
            assert list(listed.deployments) == []
    finally:
        cp.handle.stop(0)
