"""String literals this server would read otherwise than CEL defines them are refused."""

from __future__ import annotations

import pytest

from controlplane.policy import POLICY_VARIABLES, compile_rule, evaluate_rules
from modelplane import Client
from modelplane.errors import InvalidArgument
from tests.conftest import unique


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (r'size("\?") == 1', r"unsupported escape sequence '\\?'"),
        ('size("\\`") == 1', r"unsupported escape sequence '\\`'"),
        ('size("""a\nb""") == 3', "a line break inside a triple-quoted literal"),
        ("size('''a\nb''') == 3", "a line break inside a triple-quoted literal"),
        (r'labels.u == "\ud83d\ude00"', r"surrogate escape sequence '\\ud83d'"),
        (r'labels.u == "\U0000DFFF"', r"surrogate escape sequence '\\U0000DFFF'"),
    ],
)
def test_literals_that_would_be_misread_are_refused(
    client: Client, rule: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.create_policy(unique("p"), target=unique("t"), rules=[rule])
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert problem in err.value.message, err.value.message


def test_the_forms_to_write_instead_mean_what_they_say() -> None:
    rules = [
        'size("?`") == 2',
        r'size("""a\nb""") == 3',
        r'labels.u == "\U0001F600" && size(labels.u) == 1',
        'size(r"""a\nb""") == 3',  # a raw literal keeps its line break
    ]
    compiled = [compile_rule(r, variables=POLICY_VARIABLES) for r in rules]
    decision = evaluate_rules(compiled, {"labels": {"u": "\U0001f600"}})
    assert [r.outcome.value for r in decision.results] == ["passed"] * 4, decision
