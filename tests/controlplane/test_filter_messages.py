"""What a refused filter or label says, through a real control plane: a comparison other than
'=' (``labels.stage!=beta``), negation, AND/OR, parentheses and spaces around an operator are
refused as such (INVALID_FILTER) rather than read as an odd label key or value, and the rules
for label keys and values say ASCII letters, as only those pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client, InvalidArgument
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli

OPERATORS = ["!=", "<", ">", "<=", ">=", ":", "==", "=~", "!~"]


@pytest.fixture
def model(client: Client, tmp_path: Path) -> str:
    """A model with a label, and its version 1 with labels."""
    name = unique()
    client.create_model(name, labels={"team": "risk"})
    path = save(mlp(4, (8,), 2), tmp_path / "m.onnx")
    client.register_version(name, path, capture_env=False, labels={"stage": "beta"})
    return name


@pytest.mark.parametrize("op", OPERATORS)
def test_a_comparison_other_than_equals_is_refused_as_an_unsupported_operator(
    client: Client, model: str, op: str
) -> None:
    term = f"labels.stage{op}beta"
    with pytest.raises(InvalidArgument) as versions:
        client.list_versions_page(model, filter=f"state=REGISTERED {term}")
    assert versions.value.reason == "INVALID_FILTER"
    assert versions.value.metadata == {"field": "filter"}
    assert versions.value.message == (
        f"filter term {term!r} uses the operator {op!r}, which filters do not support: only "
        "labels.KEY=VALUE or state=VALUE terms are supported, separated by spaces, all of "
        "which must hold"
    )
    with pytest.raises(InvalidArgument) as models:
        client.list_models_page(filter=f"labels.team{op}risk")
    assert models.value.reason == "INVALID_FILTER"
    assert f"uses the operator {op!r}" in models.value.message
    assert "only labels.KEY=VALUE terms are supported" in models.value.message
    assert "label key" not in models.value.message


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("labels.stage:*", "the operator ':'"),
        ("state!=ARCHIVED", "the operator '!='"),
        ("state>=REGISTERED", "the operator '>='"),
        ("labels:stage", "the operator ':'"),
        ("-labels.stage=beta", "negation ('-')"),
        ("!labels.stage=beta", "negation ('!')"),
        ("NOT labels.stage=beta", "the word NOT"),
        ("labels.stage=beta AND state=REGISTERED", "the word AND"),
        ("labels.stage=beta OR labels.stage=ga", "the word OR"),
        ("(labels.stage=beta)", "parentheses"),
    ],
)
def test_other_filter_syntax_is_refused_saying_what_is_unsupported(
    client: Client, model: str, text: str, what: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.list_versions_page(model, filter=text)
    assert err.value.reason == "INVALID_FILTER"
    assert f"uses {what}, which filters do not support" in err.value.message
    assert "only labels.KEY=VALUE or state=VALUE terms are supported" in err.value.message


@pytest.mark.parametrize("text", ["labels.stage = beta", "labels.stage =beta", "state =ARCHIVED"])
def test_spaces_around_an_operator_are_refused_saying_so(
    client: Client, model: str, text: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.list_versions_page(model, filter=text)
    assert err.value.reason == "INVALID_FILTER"
    assert "write each term without spaces around its operator" in err.value.message


def test_supported_filters_still_match(client: Client, model: str) -> None:
    assert [v.version for v in client.list_versions(model, filter="labels.stage=beta")] == [1]
    assert [
        v.version
        for v in client.list_versions(model, filter='labels.stage="beta" state=registered')
    ] == [1]
    assert [m.name for m in client.list_models(filter="labels.team=risk")] == [f"models/{model}"]
    # A value an operator character cannot be part of stays a refused value.
    with pytest.raises(InvalidArgument) as err:
        client.list_versions_page(model, filter="labels.stage=be<ta")
    assert err.value.message.startswith("label value 'be<ta' in filter term")


def test_the_cli_says_the_operator_is_unsupported(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    code, _, err = Cli(controlplane.address, capsys).run(
        "versions", "list", model, "--filter", "labels.stage!=beta"
    )
    assert code == 3
    assert "INVALID_FILTER" in err
    assert "uses the operator '!='" in err and "label key" not in err


def test_label_rules_say_ascii_letters(client: Client, model: str) -> None:
    with pytest.raises(InvalidArgument) as value:
        client.create_model(unique(), labels={"owner": "zoë"})
    assert value.value.reason == "INVALID_LABELS"
    assert "use up to 63 ASCII letters, digits, '_', '.', '-'" in value.value.message
    with pytest.raises(InvalidArgument) as key:
        client.update_version(model, 1, labels={"zoë": "x"})
    assert key.value.reason == "INVALID_LABELS"
    assert "use lowercase ASCII letters, digits, '_', '.', '-' (1-63" in key.value.message
    with pytest.raises(InvalidArgument) as filter_value:
        client.list_models_page(filter="labels.owner=zoë")
    assert filter_value.value.reason == "INVALID_FILTER"
    assert "label values are up to 63 ASCII letters, digits" in filter_value.value.message
    with pytest.raises(InvalidArgument) as filter_key:
        client.list_versions_page(model, filter="labels.zoë=x")
    assert filter_key.value.reason == "INVALID_FILTER"
    assert "label keys are 1-63 lowercase ASCII letters, digits" in filter_key.value.message


@pytest.mark.parametrize("value", ["a !=b", "x AND y", "x (y", "a=b c", " x"])
def test_a_quoted_value_with_a_space_is_one_term_refused_for_its_value(
    client: Client, model: str, value: str
) -> None:
    """A quoted value is kept whole: what follows its space is not read as another term (an
    operator, a word, a parenthesis), and the value is refused as no label can hold it."""
    term = f'labels.note="{value}"'
    with pytest.raises(InvalidArgument) as refused:
        client.list_versions_page(model, filter=f"labels.stage=beta {term}")
    assert refused.value.reason == "INVALID_FILTER"
    assert refused.value.message.startswith(
        f"label value {value!r} in filter term {term!r} is invalid, so no label can match it"
    )
    # Quoted values without spaces match as bare ones do.
    page = client.list_versions_page(model, filter='labels.stage="beta"')
    assert [v.version for v in page.versions] == [1]
