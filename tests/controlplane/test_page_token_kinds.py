"""A page token is issued for one list: every other list refuses it with INVALID_PAGE_TOKEN,
those that take the same arguments included (a version's evaluations, approvals and gate
decisions all take the version as parent), rather than read its key against another table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from modelplane import Client
from modelplane.errors import error_info
from modelplane.v1 import (
    audit_pb2,
    deployments_pb2,
    evaluation_pb2,
    governance_pb2,
    operations_pb2,
    registry_pb2,
)
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel

#: A list: (its RPC on a client, the request for a page of one with a token).
Lister = tuple[Callable[[Client], Any], Callable[[str], Any]]


def _lists(model_id: str, version: str, dep: str) -> dict[str, Lister]:
    """Every list RPC, each asked for pages of one of what the fixture made."""
    parent = f"models/{model_id}"
    return {
        "ListModels": (
            lambda c: c.registry.ListModels,
            lambda t: registry_pb2.ListModelsRequest(page_size=1, page_token=t),
        ),
        "ListModelVersions": (
            lambda c: c.registry.ListModelVersions,
            lambda t: registry_pb2.ListModelVersionsRequest(
                parent=parent, page_size=1, page_token=t
            ),
        ),
        "ListAliasHistory": (
            lambda c: c.registry.ListAliasHistory,
            lambda t: registry_pb2.ListAliasHistoryRequest(name=parent, page_size=1, page_token=t),
        ),
        "ListOperations": (
            lambda c: c.operations.ListOperations,
            lambda t: operations_pb2.ListOperationsRequest(page_size=1, page_token=t),
        ),
        "ListEvaluations": (
            lambda c: c.evaluation.ListEvaluations,
            lambda t: evaluation_pb2.ListEvaluationsRequest(
                parent=version, page_size=1, page_token=t
            ),
        ),
        "ListApprovals": (
            lambda c: c.governance.ListApprovals,
            lambda t: governance_pb2.ListApprovalsRequest(
                parent=version, page_size=1, page_token=t
            ),
        ),
        "ListGateDecisions": (
            lambda c: c.governance.ListGateDecisions,
            lambda t: governance_pb2.ListGateDecisionsRequest(
                parent=version, page_size=1, page_token=t
            ),
        ),
        "ListPolicies": (
            lambda c: c.governance.ListPolicies,
            lambda t: governance_pb2.ListPoliciesRequest(page_size=1, page_token=t),
        ),
        "ListDeployments": (
            lambda c: c.deployments.ListDeployments,
            lambda t: deployments_pb2.ListDeploymentsRequest(page_size=1, page_token=t),
        ),
        "ListRolloutEvents": (
            lambda c: c.deployments.ListRolloutEvents,
            lambda t: deployments_pb2.ListRolloutEventsRequest(
                parent=f"deployments/{dep}", page_size=1, page_token=t
            ),
        ),
        "ListAuditEvents": (
            lambda c: c.audit.ListAuditEvents,
            lambda t: audit_pb2.ListAuditEventsRequest(page_size=1, page_token=t),
        ),
    }


def _something_on_every_list(c: Client, bob: Client, trained: TrainedModel) -> tuple[str, str, str]:
    """Two of everything a list shows, so that each hands out a next page token (``bob``
    approves what ``c`` registered)."""
    model_id = unique()
    c.create_model(model_id)
    targets = [unique("t") for _ in range(2)]
    for target in targets:
        c.create_model(unique())
        c.create_policy(unique("p"), target=target, rules=["true"])
    v1 = int(c.register_version(model_id, trained.onnx, capture_env=False).version)
    v2 = int(c.register_version(model_id, trained.onnx, capture_env=False).version)
    for _ in range(2):
        op = c.evaluate(model_id, v1, trained.holdout, label=trained.label, compare_to="-")
        c.operation_result(op, timeout=120)
        bob.approve(model_id, v1, targets[0], comment="ok")
        c.evaluate_gate(model_id, v1, targets[0])
    c.set_alias(model_id, "staging", v1)
    c.set_alias(model_id, "staging", v2)
    dep = unique("d")
    c.create_deployment(dep, model=model_id, champion_version=v1)
    c.create_deployment(unique("d"), model=model_id, champion_version=v1)
    c.start_rollout(dep, v2, strategy="canary", steps=[10, 50], step_duration=600)
    c.pause_rollout(dep, reason="listed")
    return model_id, f"models/{model_id}/versions/{v1}", dep


def test_no_list_takes_another_lists_page_token(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    with controlplane.client("alice") as c, controlplane.client("bob") as bob:
        lists = _lists(*_something_on_every_list(c, bob, trained_model))
        tokens: dict[str, str] = {}
        for label, (rpc, request) in lists.items():
            page = rpc(c)(request(""), metadata=c._metadata, timeout=10)
            assert page.next_page_token, f"{label} handed out no token"
            tokens[label] = page.next_page_token
            # Its own token resumes it.
            rpc(c)(request(page.next_page_token), metadata=c._metadata, timeout=10)

        taken = []
        for issuer, token in tokens.items():
            for label, (rpc, request) in lists.items():
                if label == issuer:
                    continue
                try:
                    rpc(c)(request(token), metadata=c._metadata, timeout=10)
                except grpc.RpcError as err:
                    info = error_info(err)
                    what = f"{issuer}'s token on {label}: {err.details()}"
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                    assert info is not None and info.reason == "INVALID_PAGE_TOKEN", what
                else:
                    taken.append(f"{issuer}'s token on {label}")
        assert taken == []


@pytest.mark.parametrize(
    ("issuer", "other"),
    [("ListApprovals", "ListEvaluations"), ("ListEvaluations", "ListApprovals")],
)
def test_a_versions_approvals_and_evaluations_keep_their_tokens_apart(
    controlplane: RunningControlPlane, trained_model: TrainedModel, issuer: str, other: str
) -> None:
    # The case first seen: both lists take the version as parent and page by (time, id).
    with controlplane.client("alice") as c, controlplane.client("bob") as bob:
        lists = _lists(*_something_on_every_list(c, bob, trained_model))
        rpc, request = lists[issuer]
        token = rpc(c)(request(""), metadata=c._metadata, timeout=10).next_page_token
        rpc, request = lists[other]
        with pytest.raises(grpc.RpcError) as err:
            rpc(c)(request(token), metadata=c._metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        info = error_info(err.value)
        assert info is not None and info.reason == "INVALID_PAGE_TOKEN"
