"""What is checked when a gate policy is written, and what a policy update does to the evidence.

Rules that can never yield true or false (a type mismatch, a non-bool result, a literal that
fails, a field or metric that does not exist) are refused by CreatePolicy and UpdatePolicy with
their position; valid rules, the README's among them, are accepted. The types rules are checked
against are those of the variables a real gate reads. An update that changes neither the rules
nor the target keeps the revision, so approvals and passed gates on it still count.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controlplane.policy import (
    GATE_SCHEMA,
    METRIC_NAMES,
    POLICY_ELEMENT_FIELDS,
    POLICY_VARIABLES,
    check_rule,
    compile_rule,
)
from controlplane.policy._schema import (
    APPROVAL,
    DOUBLE,
    EVALUATION,
    CelType,
    Dyn,
    ListOf,
    Record,
    Scalar,
)
from controlplane.services.evidence import gate_inputs
from controlplane.services.gates import gate_variables
from controlplane.store import Store
from modelplane import Client
from modelplane.errors import Aborted, FailedPrecondition, InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_evaluation import holdout_with_groups, register

RISK_RULE = 'approvals.exists(a, "risk" in a.roles && a.decision == "approve")'

#: Rules that fail for every version, what the refusal says, and the column it points at.
REFUSED = [
    ('metrics.roc_auc >= "high"', "no operator >= for (double, string)", 1),
    ("metrics.roc_auc", "the rule yields a double, not a bool", 1),
    ("1 / 0 == 1", "1 / 0 fails: division by zero", 1),
    ('evaluation.datset_role == "holdout"', "did you mean dataset_role?", 1),
    ("int(metrics.roc_auc) / 100.0 > 0.0", "no operator / for (int, double)", 1),
    ('"yes"', "the rule yields a string, not a bool", 1),
    ('labels.stage.matches("[")', "invalid regular expression", 1),
    ('evaluation.time - duration("1x") > evaluation.time', 'duration("1x") fails', 19),
    ("metrics.roc_auc >= 0.9 && delta.roc_acu >= 0.0", "delta has no metric 'roc_acu'", 27),
    ("metrics.recall_1 >= 0.9", "did you mean recall or recall_macro?", 1),
    ("!has(metrics.roc_acu)", "metrics has no metric 'roc_acu'", 6),
    ('fairness["sex"].demographic_parity >= 0.8', "did you mean demographic_parity_ratio", 1),
    ('fairness["sex"].groups["f"].tprr >= 0.8', "a fairness group has no field 'tprr'", 1),
    ("approvals.exists(a, a.principal)", "is a string, not a bool", 21),
    ('labels.team == 1 || labels.team == "risk"', "no operator == for (string, int)", 1),
    ("labels[1] == 'a'", "the keys of labels are strings, not an int", 1),
    ("metrics.roc_auc.all(x, x > 0.5)", "all() runs over a list or map, not a double", 1),
    ("validation.pased", "validation has no field 'pased'", 1),
    ('lineage.code.comit == "abc"', "did you mean commit?", 1),
]

#: Rules a gate can pass: the README's, and common forms over every variable.
ACCEPTED = [
    "metrics.roc_auc >= 0.9",
    'evaluation.serving == "" || delta.roc_auc >= -0.005',
    'fairness["sex"].demographic_parity_ratio >= 0.8',
    RISK_RULE,
    'size(approvals.filter(a, a.decision == "approve")) >= 2',
    'approvals.exists(a, "risk" in a.roles)',
    "!has(delta.roc_auc)",
    "!has(metrics.roc_auc) || metrics.roc_auc >= 0.9",
    "metrics.accuracy >= 1",
    "0 < metrics.accuracy",
    "metrics.accuracy != null",
    "metrics.mae + 1 < 2.0",
    "metrics.rmse / metrics.mae < 2.0",
    "metrics.log_loss / 0.0 > 1.0",
    "!(metrics.roc_auc < 0.9)",
    'labels["x"] == "y"',
    'labels.team in ["fraud", "risk"] && "team" in labels',
    'has(labels.stage) && labels.stage.matches("^(beta|ga)$")',
    "int(labels.replicas) >= 2 && double(labels.cost) < 1.5",
    'evaluation.dataset_role == "holdout" && evaluation.name != ""',
    'evaluation.time > timestamp("2024-01-01T00:00:00Z")',
    'evaluation.time - duration("24h") < timestamp("2030-01-01T00:00:00Z")',
    'evaluation.compared_version == "" || evaluation.serving == evaluation.compared_version',
    'fairness["sex"].groups.all(g, fairness["sex"].groups[g].tpr >= 0.8)',
    "fairness.sex.equalized_odds_difference <= 0.1",
    'validation.passed && validation.features["age"].out_of_range_share <= 0.05',
    "validation.features.all(f, validation.features[f].missing_share < 0.1)",
    "size(validation.missing_columns) == 0",
    'lineage.datasets.exists(d, d.role == "train" && d.row_count >= 100)',
    'lineage.datasets[0].schema.exists(c, c[0] == "age")',
    'lineage.code.commit != "" && lineage.metrics.val_auc >= 0.9',
    'lineage.parameters.C == "1.0"',
    'lineage.environment.packages.exists(p, p[0] == "numpy")',
    'approvals.map(a, a.principal).exists(p, p == "carol")',
    "type(metrics.roc_auc) == double",
    'dyn(metrics.roc_auc) == "a" || true',
    "metrics.roc_auc >= 0.9 ? true : evaluation.serving == ''",
    'metrics[labels.metric] >= 0.9 && metrics["pr_auc"] >= 0.5',
    "size(approvals) >= 2u",
    "true",
]


def checked(rule: str) -> None:
    compiled = compile_rule(rule, variables=POLICY_VARIABLES, element_fields=POLICY_ELEMENT_FIELDS)
    check_rule(compiled, GATE_SCHEMA)


@pytest.mark.parametrize("rule", ACCEPTED)
def test_rules_a_gate_can_pass_are_accepted(rule: str) -> None:
    checked(rule)


@pytest.mark.parametrize(("rule", "problem", "column"), REFUSED)
def test_rules_that_never_yield_a_bool_are_refused_with_their_position(
    rule: str, problem: str, column: int
) -> None:
    with pytest.raises(InvalidArgument) as err:
        checked(rule)
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert problem in err.value.message, err.value.message
    assert err.value.metadata["line"] == "1"
    assert err.value.metadata["column"] == str(column), err.value.message


def test_a_bad_pattern_on_a_variable_is_blamed_on_the_pattern_not_the_variables() -> None:
    with pytest.raises(InvalidArgument) as err:
        checked('labels.x.matches("[")')
    assert "its pattern is a literal, so it fails whatever the variables hold" in (
        err.value.message
    )
    assert "reads no variable" not in err.value.message
    with pytest.raises(InvalidArgument) as err:
        checked("1 / 0 == 1")
    assert "it reads no variable, so it fails for every version" in err.value.message


def test_a_misspelled_metric_is_answered_with_the_known_names() -> None:
    with pytest.raises(InvalidArgument) as err:
        checked("metrics.roc_acu >= 0.9")
    message = err.value.message
    assert "did you mean roc_auc" in message
    assert all(name in message for name in METRIC_NAMES)
    # The trainer's own metrics are named freely.
    checked("lineage.metrics.roc_acu >= 0.9")


def test_create_and_update_refuse_such_rules(client: Client) -> None:
    target, pid = unique("t"), unique("p")
    for rule, problem, column in REFUSED[:8]:
        with pytest.raises(InvalidArgument) as err:
            client.create_policy(unique("p"), target=target, rules=["true", rule])
        assert err.value.reason == "INVALID_POLICY_RULE"
        assert err.value.metadata["rule_index"] == "1"
        assert err.value.metadata["column"] == str(column)
        assert problem in err.value.message
    created = client.create_policy(pid, target=target, rules=["metrics.roc_auc >= 0.9"])
    with pytest.raises(InvalidArgument) as err:
        client.update_policy(pid, etag=created.etag, rules=["metrics.roc_acu >= 0.9"])
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert "did you mean roc_auc" in err.value.message
    assert client.get_policy(pid).rules == ["metrics.roc_auc >= 0.9"]
    assert client.create_policy(unique("p"), target=unique("t"), rules=ACCEPTED).revision == 1


# The schema against the variables a real gate reads ------------------------------------------


def _conforms(value: Any, t: CelType, path: str) -> None:
    """Assert that ``value`` (a gate variable as Python holds it) is of type ``t``."""
    if isinstance(t, Dyn):
        return
    if isinstance(t, Scalar):
        expected: dict[str, Any] = {
            "double": (int, float),
            "string": str,
            "bool": bool,
            "timestamp": datetime,
        }
        assert isinstance(value, expected[t.name]), (path, value, t.name)
        if t == DOUBLE:
            assert not isinstance(value, bool) and math.isfinite(value), (path, value)
        return
    if isinstance(t, ListOf):
        assert isinstance(value, list), (path, value)
        for i, item in enumerate(value):
            _conforms(item, t.element, f"{path}[{i}]")
        return
    assert isinstance(value, Mapping), (path, value)
    for key, item in value.items():
        assert isinstance(key, str), (path, key)
        if isinstance(t, Record):
            assert key in t.fields, f"{path}.{key} is not in the schema of {t.name}"
            _conforms(item, t.fields[key], f"{path}.{key}")
        else:
            assert t.names is None or key in t.names, f"{path}.{key} is not a known name"
            _conforms(item, t.value, f"{path}.{key}")


def test_the_gate_variables_are_of_the_types_rules_are_checked_against(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """A version with lineage, an evaluation with fairness and validation, deltas against the
    version the target serves, and an approval: every value a gate's rules read is of the type
    the checks assume, and each variable holds values (the check is not vacuous)."""
    data, _ = holdout_with_groups(trained_model, tmp_path)
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        alice.create_model(model_id)
        for _ in range(2):
            alice.register_version(
                model_id,
                trained_model.onnx,
                datasets={"train": trained_model.train},
                label=trained_model.label,
                params={"C": "1.0"},
                metrics={"val_auc": 0.97},
                code_repo="https://example.com/fraud.git",
                code_commit="abc123",
                labels={"team": "fraud"},
            )
        alice.set_alias(model_id, target, 1)
        alice.create_policy(unique("p"), target=target, rules=["true"])
        for number in (1, 2):
            alice.operation_result(
                alice.evaluate(
                    model_id, number, data, label="target", protected=["group"],
                    compare_to=target,
                )
            )  # fmt: skip
    with controlplane.client("carol") as carol:
        carol.with_roles(["risk"]).approve(model_id, 2, target)
    store = Store.open(controlplane.db_url, migrate=False)
    try:
        with store.read() as tx:
            version = tx.versions.get(model_id, 2)
            assert version is not None
            inputs = gate_inputs(tx, version, target)
            variables = gate_variables(version, inputs.latest, inputs.approvals, inputs.comparison)
    finally:
        store.close()
    assert set(variables) == set(GATE_SCHEMA) == set(POLICY_VARIABLES)
    assert set(POLICY_ELEMENT_FIELDS[("approvals",)]) == set(APPROVAL.fields)
    for name, value in variables.items():
        assert value, f"{name} is empty: the check would prove nothing"
        _conforms(value, GATE_SCHEMA[name], name)
    fairness = variables["fairness"]["group"]
    assert {"groups", "demographic_parity_ratio"} <= set(fairness)
    assert set(variables["evaluation"]) == set(EVALUATION.fields)
    assert {"passed", "features"} <= set(variables["validation"])
    assert variables["delta"] and variables["lineage"]["datasets"]


# Updates that keep the revision ---------------------------------------------------------------


def test_a_policy_update_that_leaves_the_rules_keeps_approvals_and_gates(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    controlplane = controlplane_any
    model_id, target, pid = unique(), unique("prod"), unique("p")
    with controlplane.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.operation_result(
            alice.evaluate(model_id, version, trained_model.holdout, label="target")
        )
        created = alice.create_policy(
            pid, target=target, rules=["metrics.roc_auc >= 0.5", RISK_RULE], description="relase"
        )
    with controlplane.client("carol") as carol:
        carol.with_roles(["risk"]).approve(model_id, version, target)
        assert carol.evaluate_gate(model_id, version, target).passed
    with controlplane.client("ops") as ops:
        described = ops.update_policy(pid, etag=created.etag, description="release")
        assert described.revision == 1 and described.description == "release"
        assert described.etag != created.etag and described.updated_by == "ops"
        with pytest.raises(Aborted) as stale:
            ops.update_policy(pid, etag=created.etag, description="late")
        assert stale.value.reason == "ETAG_MISMATCH"
        request_id = str(uuid.uuid4())
        same = ops.update_policy(
            pid, etag=described.etag, rules=["metrics.roc_auc >= 0.5", RISK_RULE],
            request_id=request_id,
        )  # fmt: skip
        assert same.revision == 1 and same.etag != described.etag
        assert same.description == "release"
        assert ops.get_policy(pid, revision=1) == same
        # The passed gate still stands: the alias moves without running it again.
        ops.set_alias(model_id, target, version)
        (approval,) = ops.list_approvals(model_id, version)
        assert approval.current
        assert ops.evaluate_gate(model_id, version, target).passed
        # A retry of the update answers what it answered and changes nothing.
        again = ops.update_policy(
            pid, etag=described.etag, rules=["metrics.roc_auc >= 0.5", RISK_RULE],
            request_id=request_id,
        )  # fmt: skip
        assert again == same
        assert ops.get_policy(pid) == same
        # New rules are a new revision: the approval and the gate no longer count.
        changed = ops.update_policy(
            pid, etag=same.etag, rules=["metrics.roc_auc >= 0.6", RISK_RULE]
        )
        assert changed.revision == 2 and changed.description == "release"
        with pytest.raises(FailedPrecondition) as refused:
            ops.set_alias(model_id, target, version, reason="again")
        assert refused.value.reason == "GATE_FAILED"
        (approval,) = ops.list_approvals(model_id, version)
        assert not approval.current
        assert not ops.evaluate_gate(model_id, version, target).passed
        # The first revision is kept as it was made, with the description it was made with.
        first = ops.get_policy(pid, revision=1)
        assert list(first.rules) == ["metrics.roc_auc >= 0.5", RISK_RULE]
        assert first.description == "relase"
        actions = [e.action for e in ops.audit_events(resource=f"policies/{pid}")]
    assert actions == ["CreatePolicy", "UpdatePolicy", "UpdatePolicy", "UpdatePolicy"]
