"""Page tokens are not signed: a client can make one whose key has the wrong length or kinds.

Such a token must come back as INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN, never reach SQL
and fail as INTERNAL; real tokens, time keys included, still resume where they left off. The
same holds for GetAlias's as_of: a Timestamp outside its range is INVALID_TIMESTAMP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.store.pagination import encode
from modelplane import Client
from modelplane.errors import error_info
from modelplane.v1 import (
    deployments_pb2,
    evaluation_pb2,
    governance_pb2,
    operations_pb2,
    registry_pb2,
)
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import register_versions

TIME = "2020-01-01T00:00:00+00:00"
SLOW_CANARY: dict[str, Any] = {"strategy": "canary", "steps": [10, 50], "step_duration": 600}

BAD_KEYS: list[list[Any]] = [
    [],
    [{"a": 1}],
    [[1]],
    [None],
    [True],
    [1.5],
]


def _lists(c: Client, model_id: str, dep: str) -> dict[str, tuple[Callable[..., Any], Any, Any]]:
    """List RPCs: (method, the request for a token, (the query the service hashes, a good key))."""
    parent = f"models/{model_id}"
    return {
        "ListModels by name": (
            c.registry.ListModels,
            lambda t: registry_pb2.ListModelsRequest(page_token=t),
            ({"list": "models", "filter": "", "order_by": ""}, [model_id]),
        ),
        "ListModels by time": (
            c.registry.ListModels,
            lambda t: registry_pb2.ListModelsRequest(page_token=t, order_by="create_time"),
            ({"list": "models", "filter": "", "order_by": "create_time"}, [TIME, model_id]),
        ),
        "ListModelVersions": (
            c.registry.ListModelVersions,
            lambda t: registry_pb2.ListModelVersionsRequest(parent=parent, page_token=t),
            ({"list": "versions", "parent": parent, "filter": "", "order_by": ""}, [1]),
        ),
        "ListAliasHistory": (
            c.registry.ListAliasHistory,
            lambda t: registry_pb2.ListAliasHistoryRequest(name=parent, page_token=t),
            ({"list": "aliasHistory", "name": parent}, [1]),
        ),
        "ListOperations": (
            c.operations.ListOperations,
            lambda t: operations_pb2.ListOperationsRequest(page_token=t),
            ({"list": "operations", "target": ""}, [TIME, "op"]),
        ),
        "ListEvaluations": (
            c.evaluation.ListEvaluations,
            lambda t: evaluation_pb2.ListEvaluationsRequest(
                parent=f"{parent}/versions/1", page_token=t
            ),
            ({"list": "evaluations", "parent": f"{parent}/versions/1"}, [TIME, "e"]),
        ),
        "ListGateDecisions": (
            c.governance.ListGateDecisions,
            lambda t: governance_pb2.ListGateDecisionsRequest(
                parent=f"{parent}/versions/1", page_token=t
            ),
            (
                {"list": "gateDecisions", "parent": f"{parent}/versions/1", "target": ""},
                [TIME, "g"],
            ),
        ),
        "ListPolicies": (
            c.governance.ListPolicies,
            lambda t: governance_pb2.ListPoliciesRequest(page_token=t),
            ({"list": "policies"}, ["p"]),
        ),
        "ListDeployments": (
            c.deployments.ListDeployments,
            lambda t: deployments_pb2.ListDeploymentsRequest(page_token=t),
            ({"list": "deployments"}, [dep]),
        ),
        "ListRolloutEvents": (
            c.deployments.ListRolloutEvents,
            lambda t: deployments_pb2.ListRolloutEventsRequest(
                parent=f"deployments/{dep}", page_token=t
            ),
            ({"list": "rolloutEvents", "parent": f"deployments/{dep}"}, [1]),
        ),
    }


def _wrong_keys(good: list[Any]) -> list[list[Any]]:
    """Keys of the wrong length, and keys with one value of the wrong kind."""
    wrong: list[list[Any]] = [*BAD_KEYS, [*good, good[-1]]]
    if len(good) > 1:
        wrong.append(good[:1])
    for i, value in enumerate(good):
        others: list[Any] = ["7"] if isinstance(value, int) else [7]
        if value == TIME:
            others.append("not-a-time")
        wrong += [[*good[:i], other, *good[i + 1 :]] for other in others]
    return wrong


def _unbindable_keys(good: list[Any]) -> list[list[Any]]:
    """Keys of the right shape and kinds whose values no backend can bind: integers outside
    64 bits, strings with NUL (PostgreSQL text cannot hold it) or a lone surrogate."""
    wrong: list[list[Any]] = []
    for i, value in enumerate(good):
        if isinstance(value, int):
            others: list[Any] = [2**63, 2**64, -(2**63) - 1]
        else:
            others = [f"{value}\x00", "a\x00b", "\ud800"]
        wrong += [[*good[:i], other, *good[i + 1 :]] for other in others]
    return wrong


def _with_lists(c: Client, folder: Path) -> tuple[str, str]:
    """A model with two versions and two alias moves, and a deployment with a rollout: every
    list of :func:`_lists` has something to list."""
    model_id, versions = register_versions(c, folder, 2)
    dep = unique("d")
    c.create_deployment(dep, model=model_id, champion_version=versions[0])
    c.start_rollout(dep, versions[1], **SLOW_CANARY)
    c.set_alias(model_id, "prod", versions[0])
    c.set_alias(model_id, "prod", versions[1])
    return model_id, dep


def _assert_invalid_page_tokens(
    c: Client, model_id: str, dep: str, wrong: Callable[[list[Any]], list[list[Any]]]
) -> None:
    for label, (method, request, (query, good)) in _lists(c, model_id, dep).items():
        # A key of the right shape is accepted (the token is as good as a real one).
        method(request(encode(query, good)), metadata=c._metadata, timeout=10)
        for key in wrong(good):
            with pytest.raises(grpc.RpcError) as err:
                method(request(encode(query, key)), metadata=c._metadata, timeout=10)
            what = f"{label} with key {key!r}: {err.value.details()}"
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            info = error_info(err.value)
            assert info is not None and info.reason == "INVALID_PAGE_TOKEN", what


def test_hand_made_page_tokens_are_invalid_argument(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id, dep = _with_lists(c, tmp_path)
        _assert_invalid_page_tokens(c, model_id, dep, _wrong_keys)
        assert c.get_deployment(dep).name == f"deployments/{dep}"


def test_page_token_values_no_backend_can_bind_are_invalid_argument(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, dep = _with_lists(c, tmp_path)
        _assert_invalid_page_tokens(c, model_id, dep, _unbindable_keys)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(10**13, 0), (0, -5), (0, 10**9), (-62_135_596_801, 0), (253_402_300_800, 0)],
)
def test_get_alias_as_of_outside_the_timestamp_range_is_invalid_argument(
    controlplane_any: RunningControlPlane, tmp_path: Path, seconds: int, nanos: int
) -> None:
    with controlplane_any.client() as c:
        model_id, versions = register_versions(c, tmp_path, 1)
        c.set_alias(model_id, "prod", versions[0])
        request = registry_pb2.GetAliasRequest(name=f"models/{model_id}/aliases/prod")
        request.as_of.seconds, request.as_of.nanos = seconds, nanos
        with pytest.raises(grpc.RpcError) as err:
            c.registry.GetAlias(request, metadata=c._metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        info = error_info(err.value)
        assert info is not None and info.reason == "INVALID_TIMESTAMP"
        assert info.metadata["field"] == "as_of"


def test_get_alias_as_of_at_the_ends_of_the_timestamp_range(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, versions = register_versions(c, tmp_path, 1)
        c.set_alias(model_id, "prod", versions[0])
        name = f"models/{model_id}/aliases/prod"
        latest = registry_pb2.GetAliasRequest(name=name)
        latest.as_of.seconds, latest.as_of.nanos = 253_402_300_799, 999_999_999
        got = c.registry.GetAlias(latest, metadata=c._metadata, timeout=10)
        assert got.version == f"models/{model_id}/versions/{versions[0]}"
        earliest = registry_pb2.GetAliasRequest(name=name)
        earliest.as_of.seconds = -62_135_596_800
        with pytest.raises(grpc.RpcError) as err:
            c.registry.GetAlias(earliest, metadata=c._metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


def test_real_page_tokens_with_times_still_resume(controlplane: RunningControlPlane) -> None:
    with controlplane.client() as c:
        made = [unique() for _ in range(4)]
        for model_id in made:
            c.create_model(model_id)
        for order in ("create_time", "create_time desc", "update_time"):
            paged = [m.name for m in c.list_models(order_by=order, page_size=1)]
            assert sorted(paged) == sorted(f"models/{m}" for m in made), order
