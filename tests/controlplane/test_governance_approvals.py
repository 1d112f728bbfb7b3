"""What approvals count for a gate, the names rules read them by, re-created policies, and the
approvals list's page tokens, through a real control plane."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.v1 import governance_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_request_id_reuse import versions

TWO_PEOPLE = 'size(approvals.filter(a, a.decision == "approve")) >= 2'


def test_two_person_rule_needs_two_people(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    target = unique("prod")
    with controlplane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        alice.create_policy(unique("p"), target=target, rules=[TWO_PEOPLE])
    with controlplane.client("bob") as bob:
        bob.approve(model_id, v1, target)
        bob.approve(model_id, v1, target)
        assert not bob.evaluate_gate(model_id, v1, target).passed
        with pytest.raises(FailedPrecondition) as refused:
            bob.set_alias(model_id, target, v1)
        assert refused.value.reason == "GATE_FAILED"
    with controlplane.client("carol") as carol:
        carol.approve(model_id, v1, target)
        decision = carol.evaluate_gate(model_id, v1, target)
        assert decision.passed
        listed = decision.results[0].values["approvals"]
        assert sorted(a["principal"] for a in listed) == ["bob", "carol"]


def test_a_later_reject_withdraws_the_same_persons_approve(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    target = unique("prod")
    with controlplane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        alice.create_policy(
            unique("p"), target=target, rules=['approvals.exists(a, a.decision == "approve")']
        )
    with controlplane.client("bob") as bob:
        bob.approve(model_id, v1, target)
        assert bob.evaluate_gate(model_id, v1, target).passed
        bob.approve(model_id, v1, target, decision="reject", comment="found a problem")
        assert not bob.evaluate_gate(model_id, v1, target).passed
        bob.approve(model_id, v1, target)
        assert bob.evaluate_gate(model_id, v1, target).passed


def test_only_each_approvers_latest_decision_is_listed_current(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    target, other = unique("prod"), unique("staging")
    with controlplane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        for t in (target, other):
            alice.create_policy(unique("p"), target=t, rules=["true"])
    with controlplane.client("bob") as bob, controlplane.client("carol") as carol:
        bob.approve(model_id, v1, target, comment="first")
        bob.approve(model_id, v1, other, comment="elsewhere")
        carol.approve(model_id, v1, target, comment="carol")
        bob.approve(model_id, v1, target, decision="reject", comment="withdrawn")
        listed = {
            (a.approver, a.target, a.comment): a.current for a in bob.list_approvals(model_id, v1)
        }
    assert listed == {
        ("bob", target, "first"): False,
        ("bob", other, "elsewhere"): True,
        ("carol", target, "carol"): True,
        ("bob", target, "withdrawn"): True,
    }


@pytest.mark.parametrize("field", ["principal", "approver"])
def test_rules_name_the_approver_as_principal_or_approver(
    controlplane: RunningControlPlane, tmp_path: Path, field: str
) -> None:
    target = unique("prod")
    with controlplane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        rule = f'approvals.exists(a, a.{field} == "bob" && a.decision == "approve")'
        alice.create_policy(unique("p"), target=target, rules=[rule])
        assert not alice.evaluate_gate(model_id, v1, target).passed
    with controlplane.client("bob") as bob:
        bob.approve(model_id, v1, target)
        decision = bob.evaluate_gate(model_id, v1, target)
        assert decision.passed, [(r.outcome, r.message) for r in decision.results]


def test_a_rule_on_a_field_approvals_do_not_have_is_refused_when_written(
    controlplane: RunningControlPlane,
) -> None:
    with controlplane.client("alice") as alice:
        pid = unique("p")
        with pytest.raises(InvalidArgument) as err:
            alice.create_policy(
                pid, target="prod", rules=['approvals.exists(a, a.principl == "bob")']
            )
        assert err.value.reason == "INVALID_POLICY_RULE"
        assert "'principl'" in err.value.message and "principal" in err.value.message
        assert err.value.metadata["column"] == "21"
        alice.create_policy(pid, target="prod", rules=["size(approvals) >= 0"])
        with pytest.raises(InvalidArgument):
            alice.update_policy(pid, rules=["approvals.all(x, x.role == 'risk')"])
        # However an element is reached: by position, by a string index, through a filter.
        for rule in (
            "approvals[0].decison == 'approve'",
            "approvals[size(approvals) - 1].decison == 'approve'",
            "approvals.exists(a, a['decison'] == 'approve')",
            "approvals.filter(a, true).exists(b, b.decison == 'approve')",
            "approvals.filter(a, a.decision == 'approve').all(b, b['rols'].size() > 0)",
        ):
            with pytest.raises(InvalidArgument) as refused:
                alice.update_policy(pid, rules=[rule])
            assert refused.value.reason == "INVALID_POLICY_RULE", rule
            assert "approvals elements have no field" in refused.value.message, rule
        for rule in (
            "approvals[0].decision == 'approve'",
            "approvals.exists(a, a['principal'] == 'bob')",
            "approvals.filter(a, a.decision == 'approve').map(a, a.principal).size() >= 0",
        ):
            alice.update_policy(pid, rules=[rule])


def test_the_approval_fields_rules_are_checked_against_are_those_they_get() -> None:
    from datetime import UTC, datetime

    from controlplane.domain.governance import Approval, Evidence
    from controlplane.policy import POLICY_ELEMENT_FIELDS
    from controlplane.services.evidence import approval_variables

    approval = Approval(
        "m", 1, "ap-1", "prod", "approve", "ok", "bob", ["risk"], Evidence("0" * 64), "", "",
        datetime.now(UTC),
    )  # fmt: skip
    (variables,) = approval_variables([approval])
    assert set(variables) == set(POLICY_ELEMENT_FIELDS[("approvals",)])


def test_a_recreated_policy_is_not_met_by_the_old_policys_decision(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    target, pid = unique("prod"), unique("p")
    with controlplane.client("alice") as c:
        model_id, (v1, _) = versions(c, tmp_path)
        c.create_policy(pid, target=target, rules=["size(approvals) >= 0"])
        assert c.evaluate_gate(model_id, v1, target).passed
        c.delete_policy(pid)
        strict = c.create_policy(pid, target=target, rules=["size(approvals) >= 5"])
        assert strict.revision == 2
        with pytest.raises(FailedPrecondition) as refused:
            c.set_alias(model_id, target, v1)
        assert refused.value.reason == "GATE_FAILED"
        assert not c.evaluate_gate(model_id, v1, target).passed
        # The deleted policy's revision is still there to explain the old decision.
        assert list(c.get_policy(pid, revision=1).rules) == ["size(approvals) >= 0"]


def _token(parent: str, key: object) -> str:
    from controlplane.store.pagination import _query_hash

    payload = json.dumps({"q": _query_hash({"list": "approvals", "parent": parent}), "k": key})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize("key", [["x"], [-1], [1, 2]])
def test_a_crafted_approvals_page_token_is_invalid_argument(
    controlplane: RunningControlPlane, tmp_path: Path, key: object
) -> None:
    with controlplane.client("alice") as c:
        model_id, (v1, _) = versions(c, tmp_path)
        parent = f"models/{model_id}/versions/{v1}"
        request = governance_pb2.ListApprovalsRequest(parent=parent, page_token=_token(parent, key))
        with pytest.raises(InvalidArgument) as bad:
            c._call(c.governance.ListApprovals, request)
        assert bad.value.reason == "INVALID_PAGE_TOKEN"
