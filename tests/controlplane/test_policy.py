"""CEL policies: compiling with positions, evaluating rule by rule, number types, bad input."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.policy import (
    MAX_EVALUATION_STEPS,
    POLICY_VARIABLES,
    Outcome,
    compile_rule,
    compile_rules,
    evaluate_rules,
)
from modelplane.errors import Code, InvalidArgument

GATE = (
    "metrics.roc_auc >= 0.9 && delta.roc_auc >= -0.005 && "
    'fairness["sex"].demographic_parity_ratio >= 0.8 && '
    'evaluation.dataset_role == "holdout" && '
    'approvals.exists(a, "risk" in a.roles && a.decision == "approve")'
)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
RISK_APPROVE = {"roles": ["risk", "audit"], "decision": "approve"}
RISK_REJECT = {"roles": ["risk"], "decision": "reject"}
ML_APPROVE = {"roles": ["ml-lead"], "decision": "approve"}
ML_REJECT = {"roles": ["ml-lead"], "decision": "reject"}


def passing_variables() -> dict[str, Any]:
    return {
        "metrics": {"roc_auc": 0.93, "accuracy": 0.9},
        "delta": {"roc_auc": -0.001},
        "fairness": {"sex": {"demographic_parity_ratio": 0.85}},
        "validation": {"rows": 1000, "bad_rows": 3},
        "evaluation": {"dataset_sha256": "ab" * 32, "dataset_role": "holdout", "time": NOW},
        "approvals": [
            {
                "principal": "carol",
                "roles": ["ml-lead"],
                "decision": "approve",
                "comment": "",
                "time": NOW,
            },
            {
                "principal": "dave",
                "roles": ["risk", "audit"],
                "decision": "approve",
                "comment": "ok",
                "time": NOW,
            },
        ],
        "labels": {"team": "fraud"},
        "lineage": {"git_commit": "abc123"},
    }


def one(expression: str, variables: dict[str, Any]) -> Any:
    return evaluate_rules([compile_rule(expression)], variables).results[0]


# Compiling ------------------------------------------------------------------------------------


def test_gate_rule_compiles_and_lists_what_it_reads() -> None:
    rule = compile_rule(GATE, variables=POLICY_VARIABLES)
    assert rule.references == (
        "metrics.roc_auc",
        "delta.roc_auc",
        "fairness.sex.demographic_parity_ratio",
        "evaluation.dataset_role",
        "approvals",
    )


@pytest.mark.parametrize(
    ("expression", "bad", "line", "column"),
    [
        ("metrics.roc_auc >= 0.9 && && delta.x > 0", "&&", 1, 27),
        ("metrics.roc_auc >= 0.9 &&\n  delta.roc_auc >= ) 1", ")", 2, 20),
        ("metrics.roc_auc @ 1", "@", 1, 17),
    ],
)
def test_syntax_errors_carry_line_and_column(
    expression: str, bad: str, line: int, column: int
) -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_rules(["metrics.roc_auc > 0.5", expression])
    err = info.value
    assert err.code is Code.INVALID_ARGUMENT and err.reason == "INVALID_POLICY_RULE"
    assert err.metadata == {"rule_index": "1", "line": str(line), "column": str(column)}
    assert f"rule 1: syntax error at line {line}, column {column}" in err.message
    # The message points at the offending character under a copy of its line.
    text_line, caret_line = err.message.splitlines()[-2:]
    source_line = expression.splitlines()[line - 1]
    assert text_line.strip() == source_line.strip()
    assert caret_line.index("^") - 2 == column - 1
    assert source_line[column - 1] == {"&&": "&", ")": ")", "@": "@"}[bad]


def test_a_syntax_error_in_a_long_line_shows_a_window_around_it() -> None:
    expression = "metrics.a > 0 && " * 40 + "@" + " || metrics.b > 0" * 40
    column = expression.index("@") + 1
    with pytest.raises(InvalidArgument) as info:
        compile_rule(expression)
    text_line, caret_line = info.value.message.splitlines()[-2:]
    assert text_line.startswith("  …") and text_line.endswith("…") and len(text_line) < 140
    assert text_line[caret_line.index("^")] == "@"
    assert info.value.metadata["column"] == str(column)


def test_unknown_variable_is_refused_with_its_position() -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_rule(
            'approvals.exists(a, a.decision == "approve") &&\n metric.roc_auc > 0.9',
            index=4,
            variables=POLICY_VARIABLES,
        )
    assert info.value.metadata == {"rule_index": "4", "line": "2", "column": "2"}
    assert "unknown variable 'metric'" in info.value.message
    assert "metrics" in info.value.message


@pytest.mark.parametrize("expression", ["", "   ", "x" * 5000])
def test_empty_or_oversized_rules_are_refused(expression: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_rule(expression)
    assert info.value.reason == "INVALID_POLICY_RULE"


def test_compiling_from_threads() -> None:
    exprs = [f"metrics.m{i} >= {i}.0" for i in range(16)]
    compiled: dict[int, tuple[str, ...]] = {}

    def work(i: int) -> None:
        compiled[i] = compile_rule(exprs[i]).references

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compiled == {i: (f"metrics.m{i}",) for i in range(16)}


# Evaluating -----------------------------------------------------------------------------------


def test_gate_rule_passes_and_records_the_values_it_read() -> None:
    decision = evaluate_rules([compile_rule(GATE)], passing_variables())
    assert decision.allowed
    [result] = decision.results
    assert result.outcome is Outcome.PASSED
    assert result.values["metrics.roc_auc"] == 0.93
    assert result.values["fairness.sex.demographic_parity_ratio"] == 0.85
    assert result.values["evaluation.dataset_role"] == "holdout"
    assert [a["principal"] for a in result.values["approvals"]] == ["carol", "dave"]
    assert result.missing == ()
    json.dumps(decision.to_dict())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("metrics", "roc_auc"), 0.89),
        (("delta", "roc_auc"), -0.0051),
        (("fairness", "sex", "demographic_parity_ratio"), 0.79),
        (("evaluation", "dataset_role"), "train"),
    ],
)
def test_gate_rule_fails_when_any_condition_fails(path: tuple[str, ...], value: Any) -> None:
    variables = passing_variables()
    target = variables
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    decision = evaluate_rules([compile_rule(GATE)], variables)
    assert not decision.allowed
    [result] = decision.results
    assert result.outcome is Outcome.FAILED
    assert result.values[".".join(path)] == value
    assert f"{'.'.join(path)}={value!r}" in result.message


def test_rules_are_anded_but_each_keeps_its_own_result() -> None:
    rules = compile_rules(
        ["metrics.roc_auc >= 0.9", "metrics.accuracy >= 0.95", "metrics.f1 >= 0.5"],
        variables=POLICY_VARIABLES,
    )
    decision = evaluate_rules(rules, passing_variables())
    assert not decision.allowed
    assert [r.outcome for r in decision.results] == [Outcome.PASSED, Outcome.FAILED, Outcome.ERROR]
    assert [r.index for r in decision.failures] == [1, 2]
    assert decision.results[1].values == {"metrics.accuracy": 0.9}
    assert evaluate_rules(rules[:1], passing_variables()).allowed


@pytest.mark.parametrize(
    ("expression", "missing", "key"),
    [
        ("metrics.f1 >= 0.5", "metrics.f1", "f1"),
        ('fairness["age"].dpr >= 0.8', "fairness.age.dpr", "age"),
        ('labels["owner"] == "x"', "labels.owner", "owner"),
    ],
)  # fmt: skip
def test_a_missing_key_is_a_rule_error_not_a_crash(expression: str, missing: str, key: str) -> None:
    result = one(expression, passing_variables())
    assert result.outcome is Outcome.ERROR and not result.passed
    assert result.message.startswith(f"no such key {key!r}")
    assert "line 1, column 1" in result.message
    assert result.missing == (missing,)


def test_has_guards_a_missing_key() -> None:
    result = one("!has(metrics.f1) || metrics.f1 >= 0.5", passing_variables())
    assert result.outcome is Outcome.PASSED


def test_a_variable_not_supplied_is_a_rule_error() -> None:
    variables = passing_variables()
    del variables["delta"]
    result = one("delta.roc_auc >= 0.0", variables)
    assert result.outcome is Outcome.ERROR
    assert "unknown variable 'delta'" in result.message


@pytest.mark.parametrize(
    ("approvals", "exists", "all_approve"),
    [
        ([], False, True),
        ([RISK_REJECT], False, False),
        ([ML_APPROVE, RISK_APPROVE], True, True),
        ([RISK_APPROVE, ML_REJECT], True, False),
        ([ML_APPROVE, ML_APPROVE], False, True),
    ],
)  # fmt: skip
def test_approvals_exists_and_all(
    approvals: list[dict[str, Any]], exists: bool, all_approve: bool
) -> None:
    full = [{"principal": "p", "comment": "", "time": NOW, **a} for a in approvals]
    variables = {"approvals": full}
    got = one('approvals.exists(a, "risk" in a.roles && a.decision == "approve")', variables)
    assert got.passed is exists
    assert one('approvals.all(a, a.decision == "approve")', variables).passed is all_approve
    count = sum(a["decision"] == "approve" for a in approvals)
    rule = 'size(approvals.filter(a, a.decision == "approve")) >= 2'
    assert one(rule, variables).passed is (count >= 2)


@pytest.mark.parametrize("stored", [1, 1.0])
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("metrics.x >= 1", True),
        ("metrics.x >= 1.0", True),
        ("metrics.x > 1", False),
        ("metrics.x > 1.0", False),
        ("metrics.x == 1", True),
        ("metrics.x == 1.0", True),
        ("metrics.x != 1", False),
        ("metrics.x < 2", True),
        ("metrics.x in [1, 2]", True),
        ("metrics.x in [2, 3]", False),
        ("type(metrics.x) == double", True),
    ],
)
def test_numbers_are_doubles_and_compare_with_int_literals(
    stored: float, expression: str, expected: bool
) -> None:
    result = one(expression, {"metrics": {"x": stored}})
    assert result.outcome is (Outcome.PASSED if expected else Outcome.FAILED), result.message
    assert result.values == {"metrics.x": 1.0}


def test_integer_inputs_divide_as_doubles() -> None:
    # 3 / 1000 in int arithmetic would be 0.
    result = one("validation.bad_rows / validation.rows > 0.0", passing_variables())
    assert result.passed


def test_zero_over_zero_is_an_error_not_nan() -> None:
    """0.0 / 0.0 has no value that compares as a ratio should (NaN in IEEE 754, +inf in
    celpy): a ratio rule would fail, not err, when both of its numbers are 0 (two arms with no
    error yet)."""
    zeros = {"metrics": {"a": 0.0, "b": 0.0}}
    for expression, column in (
        ("metrics.a / metrics.b <= 2.0", 1),
        ("!(metrics.a / metrics.b <= 2.0)", 3),
    ):
        result = one(expression, zeros)
        assert result.outcome is Outcome.ERROR, result.message
        assert result.message == (
            f"0.0 / 0.0 is undefined in metrics.a / metrics.b (at line 1, column {column})"
        )
    # Another double over 0.0 is infinite, with IEEE 754's sign; ints over 0 still err.
    assert one("metrics.x / metrics.a > 1e308", {"metrics": {"x": 1.0, "a": 0.0}}).passed
    assert one("-1.0 / metrics.a < -1e308", {"metrics": {"a": 0.0}}).passed
    assert one("1.0 / -0.0 < -1e308", {}).passed
    assert "division by zero" in one("1 / 0 == 1", {}).message
    # An error on one side of || or && is absorbed as CEL defines: such a rule can say what a
    # ratio of zeros means.
    assert one("metrics.a / metrics.b <= 2.0 || metrics.b == 0.0", zeros).passed


@pytest.mark.parametrize(
    "expression",
    [
        '!(metrics.x < double("NaN"))',
        '!(metrics.x > double("nan"))',
        'metrics.x != double("NaN")',
        '!(metrics.x > double("inf") - double("inf"))',
        '!(metrics.x > 0.0 * double("inf"))',
        'metrics.x in [double("NaN")] || true == false',
        '[metrics.x] != [double("NaN")]',
    ],
)
def test_a_nan_made_in_a_rule_errs_rather_than_passes(expression: str) -> None:
    """Every comparison with NaN is false (``!=`` true): a threshold that is NaN would pass a
    negated rule whatever the metric, so comparing NaN is an error and the gate fails."""
    result = one(expression, {"metrics": {"x": 0.4}})
    assert result.outcome is Outcome.ERROR, result.message
    assert result.message.startswith("NaN cannot be compared in "), result.message
    assert "compare with a number" in result.message


def test_arithmetic_results_compare_as_numbers() -> None:
    """celpy's ``-`` and ``*`` of doubles give plain floats; they compare as doubles."""
    assert one("metrics.x * 2.0 == 0.8 && metrics.x - 0.4 < 1e-12", {"metrics": {"x": 0.4}}).passed
    assert one("metrics.x * 2.0 == 1", {"metrics": {"x": 0.5}}).passed


def test_mixed_int_double_arithmetic_is_a_type_error_with_a_hint() -> None:
    result = one("1 + metrics.x > 1.5", {"metrics": {"x": 1.0}})
    assert result.outcome is Outcome.ERROR
    assert "type error" in result.message and "write 1.0, not 1" in result.message
    assert one("1.0 + metrics.x > 1.5", {"metrics": {"x": 1.0}}).passed


@pytest.mark.parametrize(
    "expression", ["int(metrics.x) / 100.0 <= 0.05", "7 % 2.0 == 1.0", "1u / 2.0 == 0.5"]
)
def test_mixed_number_types_do_not_divide(expression: str) -> None:
    """``/`` and ``%`` take operands of one type, as ``+``, ``-`` and ``*`` do: celpy would
    floor-divide an int by a double, and ``int(x) / 100.0`` would be 0 for x = 70, a rule
    that passes whatever the value."""
    result = one(expression, {"metrics": {"x": 70.0}})
    assert result.outcome is Outcome.ERROR, result.message
    assert "type error" in result.message and "write 1.0, not 1" in result.message
    assert one("metrics.x / 100.0 == 0.7", {"metrics": {"x": 70.0}}).passed
    assert one("7 / 2 == 3 && 7u / 2u == 3u && 7 % 2 == 1", {}).passed


def test_guard_rules_use_their_own_variables() -> None:
    rule = compile_rule("candidate.error_rate <= champion.error_rate + 0.01")
    assert rule.references == ("candidate.error_rate", "champion.error_rate")
    ok = evaluate_rules(
        [rule], {"candidate": {"error_rate": 0.015}, "champion": {"error_rate": 0.01}}
    )
    bad = evaluate_rules(
        [rule], {"candidate": {"error_rate": 0.03}, "champion": {"error_rate": 0.01}}
    )
    assert ok.allowed and not bad.allowed


def test_times_and_durations() -> None:
    variables = {
        "evaluation": {"time": datetime(2026, 11, 26, 12, 0)},
        "window": timedelta(hours=2),
    }
    assert one('evaluation.time > timestamp("2026-11-26T11:59:59Z")', variables).passed
    assert not one('evaluation.time > timestamp("2026-11-26T12:00:01Z")', variables).passed
    assert one('window >= duration("1h")', variables).passed


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("metrics.roc_auc", "must yield a bool; it yielded a double"),
        ("labels.team > 1", "type error in labels.team > 1"),
        ("metrics.roc_auc / 0 > 1.0", "type error"),
        ("1 / 0 == 1", "division by zero"),
        (
            "duration('1') > duration('0s')",
            "invalid value (at line 1, column 1): Invalid duration '1'",
        ),
        (
            "double('abc') > 1.0",
            "invalid value (at line 1, column 1): could not convert string to float: 'abc'",
        ),
        ("timestamp('2024-13-01T00:00:00Z') > timestamp('2024-01-01T00:00:00Z')", "invalid value"),
        ("'a'.matches('(')", "invalid regular expression"),
    ],
)
def test_evaluation_errors_are_reported_per_rule(expression: str, fragment: str) -> None:
    result = one(expression, passing_variables())
    assert result.outcome is Outcome.ERROR
    assert fragment in result.message, result.message


def test_values_without_a_cel_form_are_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        evaluate_rules([compile_rule("metrics.x > 1.0")], {"metrics": {"x": object()}})
    assert info.value.reason == "INVALID_POLICY_INPUT"
    assert info.value.metadata == {"field": "metrics.x"}


def test_an_evaluation_is_stopped_at_its_step_budget() -> None:
    rule = compile_rule("metrics.all(k, metrics.all(j, metrics[k] >= metrics[j]))")
    metrics = {f"m{i}": 0.5 for i in range(500)}
    result = evaluate_rules([rule], {"metrics": metrics}).results[0]
    assert result.outcome is Outcome.ERROR
    assert f"more than {MAX_EVALUATION_STEPS} evaluation steps" in result.message
    small = evaluate_rules([rule], {"metrics": {"a": 0.5, "b": 0.5}}).results[0]
    assert small.outcome is Outcome.PASSED


def test_plus_refuses_to_build_a_huge_list() -> None:
    doubling = ".map(b, b+b+b+b+b+b+b+b)" * 6
    rule = compile_rule(f"[[1,2,3,4,5,6,7,8]]{doubling}.all(g, size(g) > 0)")
    result = evaluate_rules([rule], {}).results[0]
    assert result.outcome is Outcome.ERROR
    # Each + is charged what it builds: the budget runs out before any value reaches the
    # size limit (see test_policy_limits.py for that).
    assert "did too much work" in result.message


def test_unknown_functions_are_refused_with_their_position() -> None:
    with pytest.raises(InvalidArgument) as err:
        compile_rule('labels.team.lowerAscii() == "risk"', variables=POLICY_VARIABLES)
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert "unknown method 'lowerAscii' at line 1, column 13" in err.value.message
    assert err.value.metadata["column"] == "13"


@pytest.mark.parametrize(
    ("expression", "escape", "line", "column"),
    [
        (r'labels.team.matches("^\d+$")', r"'\\d'", 1, 23),
        ('labels.team == "a"\n&& labels.x == "b\\q"', r"'\\q'", 2, 18),
        (r'labels.team == "\xZ1"', r"'\\xZ1'", 1, 17),
        (r'labels.team == "\U00110000"', r"'\\U00110000'", 1, 17),
        (r'string(b"\u0041") == "A"', r"'\\u'", 1, 10),
        (r'labels.team == """x\8"""', r"'\\8'", 1, 20),
    ],
)
def test_invalid_escapes_are_refused_with_their_position(
    expression: str, escape: str, line: int, column: int
) -> None:
    """CEL refuses an escape it does not define; celpy would read it as written."""
    with pytest.raises(InvalidArgument) as err:
        compile_rule(expression, variables=POLICY_VARIABLES)
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert f"invalid escape sequence {escape} in a literal" in err.value.message
    assert f"at line {line}, column {column}" in err.value.message
    assert (err.value.metadata["line"], err.value.metadata["column"]) == (str(line), str(column))


def test_valid_escapes_and_raw_strings_keep_their_meaning() -> None:
    rules = compile_rules(
        [
            r'labels.team.matches(r"^\d+$")',
            r'labels.team.matches("^\\d+$")',
            r'labels.name == "\x41\u00e9\101\n\"\'"',
            r'b"\377\x41" == b"\xff" + b"A"',
        ],
        variables=POLICY_VARIABLES,
    )
    variables = passing_variables()
    variables["labels"] = {"team": "42", "name": "AéA\n\"'"}
    decision = evaluate_rules(rules, variables)
    assert [r.passed for r in decision.results] == [True, True, True, True], decision
