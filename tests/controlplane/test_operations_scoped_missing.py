"""A caller whose roles hold only on some models gets one answer for an operation of another
model and for one that does not exist (Get, Wait and Cancel alike), as for deployments: the
refusal names the operation it asked for and nothing of what a hidden one is about."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from modelplane import Client
from modelplane.errors import NotFound, PermissionDenied
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_governance_evaluation import register


@dataclass
class Ops:
    server: TokenServer
    a: str
    b: str
    mine: str
    theirs: str


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel) -> Iterator[Ops]:
    a, b = unique("a"), unique("b")
    people = {"ada": (["admin"], []), "dana": (["developer"], [a]), "sam": (["viewer"], [a])}
    server = start_token_server(tmp_path_factory.mktemp("scoped-ops"), people)
    with server.client("ada") as ada:
        version_a = register(ada, trained_model, a)
        version_b = register(ada, trained_model, b)
        mine = ada.evaluate(a, version_a, trained_model.holdout, label="target")
        theirs = ada.evaluate(b, version_b, trained_model.holdout, label="target")
        for op in (mine, theirs):
            ada.operation_result(op, timeout=120)
    yield Ops(server, a, b, mine.name, theirs.name)
    server.cp.handle.stop(0)


def _refusal(call: Callable[[], object]) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as denied:
        call()
    return denied.value


def _calls(c: Client, name: str) -> dict[str, Callable[[], object]]:
    return {
        "get": lambda: c.get_operation(name),
        "wait": lambda: c.wait_operation(name, timeout=1),
        "cancel": lambda: c.cancel_operation(name),
    }


@pytest.mark.parametrize("call", ["get", "wait", "cancel"])
def test_a_hidden_operation_is_answered_as_a_missing_one(ops: Ops, call: str) -> None:
    missing = f"operations/op-{uuid.uuid4().hex}"
    with ops.server.client("dana") as dana:
        assert dana.get_operation(ops.mine).done
        hidden = _refusal(_calls(dana, ops.theirs)[call])
        absent = _refusal(_calls(dana, missing)[call])
    for err, name in ((hidden, ops.theirs), (absent, missing)):
        assert err.reason == "MODEL_NOT_IN_SCOPE", err
        assert err.metadata["operation"] == name
        assert name in err.message
    assert hidden.message.replace(ops.theirs, "OP") == absent.message.replace(missing, "OP")
    assert {k: v.replace(ops.theirs, "OP") for k, v in hidden.metadata.items()} == {
        k: v.replace(missing, "OP") for k, v in absent.metadata.items()
    }
    # Nothing of what the hidden operation is about: neither its model nor its version.
    assert ops.b not in hidden.message and ops.b not in str(hidden.metadata)
    assert "versions/" not in hidden.message and "model" not in hidden.metadata


def test_a_viewer_gets_the_same_answer_and_an_unscoped_caller_hears_not_found(ops: Ops) -> None:
    missing = f"operations/op-{uuid.uuid4().hex}"
    with ops.server.client("sam") as sam:
        hidden = _refusal(lambda: sam.get_operation(ops.theirs))
        absent = _refusal(lambda: sam.wait_operation(missing, timeout=1))
        assert (hidden.reason, absent.reason) == ("MODEL_NOT_IN_SCOPE", "MODEL_NOT_IN_SCOPE")
        assert _refusal(lambda: sam.cancel_operation(missing)).reason == "ROLE_REQUIRED"
    with ops.server.client("ada") as ada:
        assert ada.get_operation(ops.theirs).done
        for call in _calls(ada, missing).values():
            with pytest.raises(NotFound) as not_found:
                call()
            assert not_found.value.reason == "OPERATION_NOT_FOUND"
