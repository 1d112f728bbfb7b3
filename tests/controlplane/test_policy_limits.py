"""What a rule may cost: work charged by the size of the values it reads and builds, deadlines
per rule and per policy, and gate rules evaluated without holding up other writes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from controlplane.policy import (
    MAX_EVALUATION_STEPS,
    MAX_RULE_DEPTH,
    MAX_VALUE_SIZE,
    POLICY_VARIABLES,
    Outcome,
    _evaluate,
    _limits,
    compile_rule,
    evaluate_rules,
)
from controlplane.services import gates
from modelplane import Client
from modelplane.errors import InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import register_versions

TEN = "[0,1,2,3,4,5,6,7,8,9]"
#: [[0..9]] doubled 13 times: one list of 81,920 elements, from a rule of a few dozen nodes.
DOUBLED = f"[{TEN}]" + ".map(a, a + a)" * 13
#: Shared rather than copied: 2**20 leaves from a rule of a few dozen nodes.
SHARED = f"[{TEN}]" + ".map(a, [a, a])" * 20
TOO_MUCH = "did too much work"


def result(expression: str, variables: dict[str, Any] | None = None) -> Any:
    rule = compile_rule(expression, variables=POLICY_VARIABLES)
    return evaluate_rules([rule], variables or {}).results[0]


@pytest.mark.parametrize(
    "expression",
    [
        # One step each, but each reads every element of a list built by doubling.
        f"{DOUBLED}.all(a, !(-1 in a))",
        f"{DOUBLED}.all(a, a != [1])",
        f"{DOUBLED}.all(a, a.exists(i, i == -1) || size(a) > 0)",
        f"{SHARED}.all(a, a == {SHARED}[0])",
        f"{SHARED}.all(a, string(a) != '')",
        f"{SHARED}.all(a, [1] in a || true)",
    ],
)
def test_operations_are_charged_by_the_size_of_their_values(expression: str) -> None:
    got = result(expression)
    assert got.outcome is Outcome.ERROR, got.message
    assert TOO_MUCH in got.message
    # Stopped by its step count (work done), not by the wall-clock backstop.
    assert f"more than {MAX_EVALUATION_STEPS} evaluation steps" in got.message


def test_a_rule_that_would_run_for_seconds_is_stopped_at_once() -> None:
    # Accepted when written (234 characters); it ran for 20 s when `in` was one step.
    expression = f"{DOUBLED}.all(a, a.all(i, !(-1 in a)))"
    got = result(expression)
    assert got.outcome is Outcome.ERROR and TOO_MUCH in got.message
    assert f"more than {MAX_EVALUATION_STEPS} evaluation steps" in got.message


def test_values_built_are_bounded_in_size() -> None:
    big = {"lineage": {"xs": list(range(60_000)), "s": "x" * 60_000}}
    for expression in ["size(lineage.xs + lineage.xs) > 0", "size(lineage.s + lineage.s) > 0"]:
        got = result(expression, big)
        assert got.outcome is Outcome.ERROR, got.message
        assert f"longer than {MAX_VALUE_SIZE}" in got.message and TOO_MUCH in got.message


def test_ordinary_rules_are_not_stopped() -> None:
    variables = {
        "metrics": {f"m{i}": 0.9 for i in range(200)},
        "labels": {"team": "fraud", "note": "n" * 5000},
        "lineage": {"datasets": [{"name": f"d{i}", "rows": i} for i in range(500)]},
    }
    for expression in [
        "metrics.all(k, metrics[k] >= 0.5)",
        'labels.note.startsWith("n") && labels.team in ["fraud", "risk"]',
        'lineage.datasets.exists(d, d.name == "d499") && size(lineage.datasets) == 500',
        "[1, 2, 3] + [4] == [1, 2, 3, 4] && type(metrics.m0) == double",
    ]:
        assert result(expression, variables).outcome is Outcome.PASSED, expression


def test_a_rule_is_stopped_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "MAX_RULE_SECONDS", 0.02)
    metrics = {f"m{i}": 0.5 for i in range(150)}  # 22,500 iterations: within the step budget
    got = result("metrics.all(k, metrics.all(j, metrics[k] >= metrics[j]))", {"metrics": metrics})
    assert got.outcome is Outcome.ERROR
    assert "ran longer than 0.02 s" in got.message and TOO_MUCH in got.message


def test_a_policy_is_stopped_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_evaluate, "MAX_POLICY_SECONDS", 0.05)
    metrics = {f"m{i}": 0.5 for i in range(150)}
    rule = compile_rule("metrics.all(k, metrics.all(j, metrics[k] >= metrics[j]))")
    decision = evaluate_rules([rule] * 4, {"metrics": metrics})
    assert not decision.allowed
    last = decision.results[-1]
    assert last.outcome is Outcome.ERROR
    assert "the rules ran longer than 0.05 s in all" in last.message


def test_a_gate_with_an_expensive_rule_is_stopped_by_its_step_budget(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    expensive = f"{DOUBLED}.all(a, a.all(i, !(-1 in a)))"
    with controlplane.client() as c:
        model_id, (v1,) = register_versions(c, tmp_path, 1, capture_env=False)
        target = unique("prod")
        c.create_policy(unique("p"), target=target, rules=[expensive, expensive])
        decision = c.evaluate_gate(model_id, v1, target)
        assert not decision.passed
        assert [r.outcome for r in decision.results] == ["error", "error"]
        steps = f"more than {MAX_EVALUATION_STEPS} evaluation steps"
        assert all(TOO_MUCH in r.message and steps in r.message for r in decision.results)
        (listed,) = c.list_gate_decisions(model_id, v1, target=target)
        assert listed.name == decision.name and not listed.passed


def test_other_writes_go_on_while_a_gate_evaluates(
    controlplane: RunningControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules run outside the gate's write transaction: a write made while they run neither
    waits for them nor changes the decision when it touches nothing the gate reads."""
    created: list[str] = []

    def evaluate_while_writing(*args: Any, **kwargs: Any) -> Any:
        with Client(controlplane.address, principal="bob", timeout=5) as bob:
            created.append(bob.create_policy(unique("p"), target=unique("t"), rules=["true"]).name)
        return evaluate_rules(*args, **kwargs)

    monkeypatch.setattr(gates, "evaluate_rules", evaluate_while_writing)
    with controlplane.client() as c:
        model_id, (v1,) = register_versions(c, tmp_path, 1, capture_env=False)
        target = unique("prod")
        c.create_policy(unique("p"), target=target, rules=["size(labels) >= 0"])
        decision = c.evaluate_gate(model_id, v1, target)
    assert decision.passed
    assert len(created) == 1


#: Ways to nest a rule deeply, each with n levels.
NESTINGS = {
    "parentheses": lambda n: "(" * n + "true" + ")" * n,
    "not": lambda n: "!" * (2 * n) + "true",
    "fields": lambda n: "metrics" + ".a" * n + " > 0",
    "plus": lambda n: " + ".join(["1"] * n) + " > 0",
    "and": lambda n: " && ".join(["true"] * n),
    "lists": lambda n: "[" * n + "]" * n + " == []",
    "calls": lambda n: "size(" * n + "'a'" + ")" * n + " > 0",
    "comparisons": lambda n: "1 < 2 == " * n + "true",
    "ternaries": lambda n: "(true ? " * n + "true" + " : false)" * n,
}


def test_deeply_nested_rules_are_refused_when_written(client: Client) -> None:
    for rule in ["(" * 500 + "true" + ")" * 500, "!" * 2000 + "true", "metrics" + ".a" * 2000]:
        with pytest.raises(InvalidArgument) as err:
            client.create_policy(unique("p"), target=unique("t"), rules=[rule + " > 0"])
        assert err.value.reason == "INVALID_POLICY_RULE"
        assert "nested too deeply" in err.value.message
        assert f"at most {MAX_RULE_DEPTH} levels" in err.value.message
        assert len(err.value.message) < 1000


def _deepest_accepted(nest: Any) -> str:
    """The rule of the largest ``n`` that ``compile_rule`` accepts (deeper ones are refused as
    nested too deeply): doubling, then bisecting."""

    def accepted(n: int) -> bool:
        try:
            compile_rule(nest(n), variables=POLICY_VARIABLES)
        except InvalidArgument as err:
            assert "nested too deeply" in err.message, err.message
            return False
        return True

    assert accepted(1)
    low, high = 1, 2
    while accepted(high):
        low, high = high, high * 2
        assert high < 4096, "never refused"
    while high - low > 1:  # accepted(low), refused(high)
        mid = (low + high) // 2
        low, high = (mid, high) if accepted(mid) else (low, mid)
    return str(nest(low))


@pytest.mark.parametrize("form", sorted(NESTINGS))
def test_the_deepest_rule_accepted_evaluates(form: str) -> None:
    """On a thread with frames below it, as a server's rule is."""
    rule = compile_rule(_deepest_accepted(NESTINGS[form]), variables=POLICY_VARIABLES)
    got: list[Any] = []

    def below(frames: int) -> None:
        if frames:
            below(frames - 1)
        else:
            got.append(evaluate_rules([rule], {"metrics": {"a": 1.0}}).results[0])

    worker = threading.Thread(target=below, args=(150,))
    worker.start()
    worker.join()
    assert "recursed" not in got[0].message, got[0].message


@pytest.mark.parametrize(
    "expression", ["int(1.0 / 0.0) > 0", "uint(-1.0 / 0.0) > 0u", "int(metrics.loss / 0.0) < 2"]
)
def test_an_infinite_double_made_an_integer_is_a_rule_error(expression: str) -> None:
    got = result(expression, {"metrics": {"loss": 0.5}})
    assert got.outcome is Outcome.ERROR
    assert "out of range" in got.message and "infinity" in got.message


def test_a_gate_whose_rule_overflows_records_a_failed_decision(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id, (v1,) = register_versions(c, tmp_path, 1, capture_env=False)
        target = unique("prod")
        # int() of an infinite double: 1.0 / 0.0 written with literals alone is refused when
        # the policy is written, so the infinity comes from the (empty) labels.
        overflows = "int((double(size(labels)) + 1.0) / 0.0) > 0"
        c.create_policy(unique("p"), target=target, rules=[overflows, "true"])
        decision = c.evaluate_gate(model_id, v1, target)
        assert not decision.passed
        assert [r.outcome for r in decision.results] == ["error", "passed"]
        assert "out of range" in decision.results[0].message
        (listed,) = c.list_gate_decisions(model_id, v1, target=target)
        assert listed.name == decision.name


@pytest.mark.parametrize(
    "expression",
    [
        "(" * 30 + "metrics.a > 0.0" + ")" * 30,
        " + ".join(["metrics.a"] * 150) + " > 0.0",
        "int(" * 30 + "metrics.a" + ")" * 30 + " > 0",
        "approvals.exists(x, " + "(" * 30 + "x.decision == 'approve'" + ")" * 30 + ") || true",
    ],
)
def test_rules_as_deep_as_earlier_servers_evaluated_are_still_accepted(expression: str) -> None:
    """Policies stored by a server before the depth limit keep working: what its evaluator
    could run (30 nested parentheses or calls, a chain of 150 terms) is within the limit."""
    rule = compile_rule(expression, variables=POLICY_VARIABLES)
    got = evaluate_rules([rule], {"metrics": {"a": 1.0}, "approvals": []}).results[0]
    assert got.outcome is Outcome.PASSED, got.message
