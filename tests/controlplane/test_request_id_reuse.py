"""Request ids (AIP-155) through a real control plane: the same request under a request id
replays its stored result; a different request under it is refused with REQUEST_ID_REUSED and
changes nothing; and no change is ever committed without its audit event."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import audit
from controlplane.store import Store
from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.server.context import RequestContext
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def versions(c: Client, tmp: Path, count: int = 2) -> tuple[str, list[int]]:
    """A new model of alice's with ``count`` small registered versions."""
    model_id = unique()
    c.create_model(model_id)
    out = []
    for seed in range(count):
        path = onnx_models.save(
            onnx_models.mlp(8, (8,), seed=seed), tmp / f"{model_id}-{seed}.onnx"
        )
        out.append(int(c.register_version(model_id, path).version))
    return model_id, out


def rid() -> str:
    return str(uuid.uuid4())


def audited(c: Client, action: str, resource: str = "") -> list[str]:
    return [e.resource for e in c.audit_events(resource=resource) if e.action == action]


def test_set_alias_request_id_reused_for_another_alias_is_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client("alice") as c:
        model_id, (v1, v2) = versions(c, tmp_path)
        request_id = rid()
        first = c.set_alias(model_id, "staging", v1, request_id=request_id)
        with pytest.raises(InvalidArgument) as reused:
            c.set_alias(model_id, "canary", v2, request_id=request_id)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        with pytest.raises(InvalidArgument):  # same alias, other version
            c.set_alias(model_id, "staging", v2, request_id=request_id)
        assert [a.name.rsplit("/", 1)[1] for a in c.list_aliases(model_id)] == ["staging"]
        # The alias moves on; a retry of the first request answers what it did then.
        c.set_alias(model_id, "staging", v2)
        again = c.set_alias(model_id, "staging", v1, request_id=request_id)
        assert again.version == first.version == f"models/{model_id}/versions/{v1}"
        assert c.get_alias(model_id, "staging").version == f"models/{model_id}/versions/{v2}"
        assert (
            audited(c, "SetAlias", f"models/{model_id}")
            == [f"models/{model_id}/aliases/staging"] * 2
        )


def test_approve_request_id_reused_for_another_version_or_caller_is_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client("alice") as alice:
        model_id, (v1, v2) = versions(alice, tmp_path)
        alice.create_policy(unique("p"), target="production", rules=["true"])
    request_id = rid()
    with controlplane.client("bob") as bob:
        first = bob.approve(model_id, v1, "production", request_id=request_id)
        with pytest.raises(InvalidArgument) as reused:
            bob.approve(model_id, v2, "production", request_id=request_id)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        with pytest.raises(InvalidArgument):
            bob.approve(model_id, v1, "production", decision="reject", request_id=request_id)
        assert bob.list_approvals(model_id, v2) == []
        assert bob.approve(model_id, v1, "production", request_id=request_id).name == first.name
        assert [a.name for a in bob.list_approvals(model_id, v1)] == [first.name]
    with controlplane.client("carol") as carol:
        with pytest.raises(InvalidArgument) as other_caller:
            carol.approve(model_id, v1, "production", request_id=request_id)
        assert other_caller.value.reason == "REQUEST_ID_REUSED"
        assert audited(carol, "Approve") == [first.name]


def test_a_replayed_approval_is_marked_current_as_a_listing_marks_it(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """Before, a replay answered the stored row with ``current`` never worked out: false for
    an approval that still stood."""
    with controlplane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        alice.create_policy(unique("p"), target="production", rules=["true"])
    request_id = rid()
    with controlplane.client("bob") as bob:
        first = bob.approve(model_id, v1, "production", request_id=request_id)
        assert first.current
        assert bob.approve(model_id, v1, "production", request_id=request_id) == first
        bob.approve(model_id, v1, "production", decision="reject")  # withdraws the approval
        again = bob.approve(model_id, v1, "production", request_id=request_id)
        listed = {a.name: a.current for a in bob.list_approvals(model_id, v1)}
        assert (
            (again.name, again.current) == (first.name, False) == (first.name, listed[first.name])
        )


def test_evaluate_gate_replays_its_own_decision(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client("alice") as c:
        model_id, (v1, _) = versions(c, tmp_path)
        c.create_policy(unique("p"), target="production", rules=["size(approvals) >= 0"])
        request_id = rid()
        first = c.evaluate_gate(model_id, v1, "production", request_id=request_id)
        with pytest.raises(InvalidArgument) as reused:
            c.evaluate_gate(model_id, v1, "staging", request_id=request_id)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        later = c.evaluate_gate(model_id, v1, "production")
        assert later.name != first.name
        assert c.evaluate_gate(model_id, v1, "production", request_id=request_id).name == first.name
        decisions = c.list_gate_decisions(model_id, v1)
        assert sorted(d.name for d in decisions) == sorted([first.name, later.name])
        assert sorted(audited(c, "EvaluateGate")) == sorted([first.name, later.name])


def test_rollout_request_id_reused_on_another_deployment_is_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client("alice") as c:
        model_id, (v1, v2) = versions(c, tmp_path)
        one, two = unique("d"), unique("d")
        for d in (one, two):
            c.create_deployment(d, model=model_id, champion_version=v1)
        start_id = rid()
        c.start_rollout(one, v2, strategy="ab", step_duration=600, request_id=start_id)
        with pytest.raises(InvalidArgument) as reused:
            c.start_rollout(two, v2, strategy="ab", step_duration=600, request_id=start_id)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert not c.get_deployment(two).HasField("rollout")
        c.start_rollout(two, v2, strategy="ab", step_duration=600)
        pause_id = rid()
        c.pause_rollout(one, request_id=pause_id)
        with pytest.raises(InvalidArgument) as paused:
            c.pause_rollout(two, request_id=pause_id)
        assert paused.value.reason == "REQUEST_ID_REUSED"
        assert c.get_deployment(two).rollout.state != c.get_deployment(one).rollout.state
        replayed = c.pause_rollout(one, request_id=pause_id)
        assert replayed.name == f"deployments/{one}"


# The store itself ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'cp.db'}")
    audit.install(s)
    yield s
    s.close()


def test_a_change_made_while_replaying_is_still_audited(store: Store) -> None:
    ctx = RequestContext(principal="alice")
    request_id = rid()
    for value in (1, 2):
        with store.write(ctx, "Touch", request_id, request={"n": 1}) as tx:
            assert (tx.replay is None) == (value == 1)
            tx.record("Touch", "models/x", None, {"value": value})
    events, _ = audit.list_events(store, page_size_=100)
    assert [(e.action, e.request_id) for e in events] == [("Touch", request_id)] * 2


def test_a_request_id_replays_only_the_same_request(store: Store) -> None:
    alice, bob = RequestContext(principal="alice"), RequestContext(principal="bob")
    request_id = rid()
    with store.write(alice, "Touch", request_id, request={"n": 1}) as tx:
        tx.record("Touch", "models/x", None, None)
    with store.write(alice, "Touch", request_id, request={"n": 1}) as tx:
        assert tx.replay == "models/x" and tx.replay_time is not None
    for ctx, method, request in ((alice, "Touch", {"n": 2}), (bob, "Touch", {"n": 1})):
        with (
            pytest.raises(InvalidArgument) as err,
            store.write(ctx, method, request_id, request=request),
        ):
            pass
        assert err.value.reason == "REQUEST_ID_REUSED"


def test_migration_matches_the_request_ids_table(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from controlplane.store.tables import metadata

    store = Store.open(f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        with store.engines.write.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        assert [d for d in diffs if "request_ids" in repr(d)] == []
    finally:
        store.close()


def test_every_mutation_refuses_its_request_id_for_another_request(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    # (first call, a different request under the same id) for each kind of mutation; the
    # first call repeated replays, and the different one changes nothing.
    with controlplane.client("alice") as c:
        model_id, (v1, v2) = versions(c, tmp_path)
        c.set_alias(model_id, "a", v1)
        c.set_alias(model_id, "b", v1)
        other = unique()
        policy = unique()
        cases = [
            (
                lambda r: c.create_model(other, description="one", request_id=r),
                lambda r: c.create_model(other, description="two", request_id=r),
            ),
            (
                lambda r: c.update_model(model_id, description="x", request_id=r),
                lambda r: c.update_model(model_id, description="y", request_id=r),
            ),
            (
                lambda r: c.delete_alias(model_id, "a", request_id=r),
                lambda r: c.delete_alias(model_id, "b", request_id=r),
            ),
            (
                lambda r: c.create_policy(policy, target="t1", rules=["true"], request_id=r),
                lambda r: c.create_policy(policy, target="t2", rules=["true"], request_id=r),
            ),
            (
                lambda r: c.archive_version(model_id, v2, request_id=r),
                lambda r: c.archive_version(model_id, v1, request_id=r),
            ),
        ]
        for first, different in cases:
            request_id = rid()
            first(request_id)
            first(request_id)
            with pytest.raises(InvalidArgument) as reused:
                different(request_id)
            assert reused.value.reason == "REQUEST_ID_REUSED"
        assert c.get_model(other).description == "one"
        assert c.get_model(model_id).description == "x"
        assert [a.name.rsplit("/", 1)[1] for a in c.list_aliases(model_id)] == ["b"]
        assert c.get_policy(policy).target == "t1"
        assert c.get_version(model_id, v1).state != c.get_version(model_id, v2).state


@pytest.mark.parametrize(
    "request_id",
    [
        "\u0661\u0662\u0663",
        "\uff52\uff45\uff51-1",
        "a b",
        "with_underscore",
        "x" * 65,
        "tab\tid",
        "-" * 65,
    ],
)
def test_a_malformed_request_id_is_refused_and_changes_nothing(
    controlplane: RunningControlPlane, request_id: str
) -> None:
    """Request ids are ASCII letters, digits and dashes (a UUID fits): other letters and
    digits (Arabic-Indic, full-width) are refused too, before anything is written."""
    model_id = unique()
    with controlplane.client("alice") as c:
        with pytest.raises(InvalidArgument) as refused:
            c.create_model(model_id, request_id=request_id)
        assert refused.value.reason == "INVALID_REQUEST_ID"
        assert model_id not in [m.name.split("/")[-1] for m in c.list_models()]
        valid = ("Id-" + uuid.uuid4().hex * 2)[:64]  # 64 long, mixed case
        assert c.create_model(model_id, request_id=valid).name == f"models/{model_id}"
