"""Comparisons as the README promises: numbers across int, uint and double, null, and lists and
maps element by element."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.policy import POLICY_VARIABLES, Outcome, compile_rule, evaluate_rules
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import register_versions

VARIABLES = {"metrics": {"roc_auc": 0.91, "none": None}, "labels": {"team": "a"}}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 < metrics.roc_auc", True),
        ("1 <= metrics.roc_auc", False),
        ("1 > metrics.roc_auc", True),
        ("0 >= metrics.roc_auc", False),
        ("0u < metrics.roc_auc && metrics.roc_auc < 1u", True),
        ("1u > 0 && 2 >= 2u && 1 < 1.5 && 2.5 > 2u", True),
        ("metrics.roc_auc != null && metrics.roc_auc > 0.9", True),
        ("metrics.roc_auc == null", False),
        ("null != metrics.roc_auc", True),
        ("metrics.none == null && !(metrics.none == 0.5) && metrics.none != 0.5", True),
        ("[1] != null && metrics != null && labels.team != null", True),
        ("[1, 2] == [1.0, 2.0] && [1u] == [1]", True),
        ("[1, 2] == [1.0, 2.5] || [1] == [1, 1]", False),
        ("{'a': 1} == {'a': 1.0} && {1: 'x'} == {1u: 'x'}", True),
        ("{'a': 1} != {'b': 1} && {'a': [1]} == {'a': [1.0]}", True),
        ("null in [1, null] && 1u in [1.0] && [1] in [[1.0]]", True),
    ],
)
def test_comparisons_across_number_types_null_and_containers(
    expression: str, expected: bool
) -> None:
    rule = compile_rule(expression, variables=POLICY_VARIABLES)
    got = evaluate_rules([rule], VARIABLES).results[0]
    assert got.outcome is (Outcome.PASSED if expected else Outcome.FAILED), got.message


@pytest.mark.parametrize(
    "expression", ["!(metrics.x < 0.8)", "!(metrics.x > 0.1)", "metrics.x >= 0.8"]
)
def test_a_nan_value_never_passes_even_negated(expression: str) -> None:
    """NaN compares false with everything, so a negated ordering would pass: it is null, which
    an ordering refuses, and the rule errs."""
    got = evaluate_rules([compile_rule(expression)], {"metrics": {"x": float("nan")}}).results[0]
    assert got.outcome is Outcome.ERROR and not got.passed, got.message


@pytest.mark.parametrize("expression", ["labels.team > 1", "labels.team == 1", "[1] == ['a']"])
def test_values_of_unrelated_types_still_do_not_compare(expression: str) -> None:
    got = evaluate_rules([compile_rule(expression)], VARIABLES).results[0]
    assert got.outcome is Outcome.ERROR and "type error" in got.message


def test_a_gate_compares_an_int_literal_with_a_metric(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id, (v1,) = register_versions(c, tmp_path, 1, capture_env=False)
        c.register_version(model_id, tmp_path / "m0.onnx", metrics={"loss": 0.5})
        target = unique("prod")
        c.create_policy(
            unique("p"),
            target=target,
            rules=[
                "0 < lineage.metrics.loss && lineage.metrics.loss < 1",
                "lineage.metrics.loss != null",
                "[1, 2] == [1.0, 2.0]",
            ],
        )
        decision = c.evaluate_gate(model_id, v1 + 1, target)
        assert [r.outcome for r in decision.results] == ["passed"] * 3, decision.results
        assert decision.passed
