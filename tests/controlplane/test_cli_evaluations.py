"""``modelplane evaluations list|get`` against a real control plane: a version's evaluations,
newest first and paged, and one shown as ``evaluate --wait`` shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


@dataclass
class Evaluated:
    model: str
    first: dict  # type: ignore[type-arg]
    second: dict  # type: ignore[type-arg]
    second_table: str  # evaluate --wait's table output for the second


def _evaluate(cli: Cli, model: str, data: str, *extra: str, output: str = "json") -> str:
    argv = ["evaluate", model, "1", "--data", data, "--label", "target", "--wait", *extra]
    code, out, err = cli.run(*argv, output=output)
    assert code == 0, err
    return out


@pytest.fixture
def evaluated(cli: Cli, trained_model: TrainedModel) -> Evaluated:
    """Version 1 of a new model evaluated twice: on the holdout CSV, then on the train
    Parquet as role ``test`` (the second once more in table mode, for its output)."""
    model = unique()
    cli.json("models", "create", model)
    cli.json("versions", "register", model, "--onnx", str(trained_model.onnx))
    first = json.loads(_evaluate(cli, model, str(trained_model.holdout)))
    second = json.loads(
        _evaluate(cli, model, str(trained_model.train), "--role", "test", "--request-id", "r2")
    )
    # The same request again answers with the same evaluation, printed as a table.
    table = _evaluate(
        cli,
        model,
        str(trained_model.train),
        "--role",
        "test",
        "--request-id",
        "r2",
        output="table",
    )
    return Evaluated(model, first, second, table)


def test_list_is_newest_first_with_the_datasets_and_headline_metrics(
    cli: Cli, evaluated: Evaluated
) -> None:
    listed = cli.json("evaluations", "list", evaluated.model, "1")
    assert [e["name"] for e in listed["evaluations"]] == [
        evaluated.second["name"],
        evaluated.first["name"],
    ]
    assert listed["evaluations"] == [evaluated.second, evaluated.first]
    assert listed["next_page_token"] == ""

    code, out, err = cli.run("evaluations", "list", evaluated.model, "1", output="table")
    assert code == 0, err
    lines = out.splitlines()
    for ev in (evaluated.first, evaluated.second):
        [line] = [line for line in lines if ev["name"] in line]
        assert f"{ev['dataset_role']} {ev['dataset_sha256'][:16]}" in line
        assert "classification" in line and f" {ev['rows']} " in line
        for metric in ("roc_auc", "accuracy", "f1"):
            assert f"{metric}={ev['metrics'][metric]:.4g}" in line
        assert ev["create_time"] in line
    assert lines.index(next(x for x in lines if evaluated.second["name"] in x)) < lines.index(
        next(x for x in lines if evaluated.first["name"] in x)
    )


def test_list_pages_and_takes_an_alias(cli: Cli, evaluated: Evaluated) -> None:
    page = cli.json("evaluations", "list", evaluated.model, "1", "--page-size", "1")
    assert [e["name"] for e in page["evaluations"]] == [evaluated.second["name"]]
    assert page["next_page_token"]
    rest = cli.json(
        "evaluations", "list", evaluated.model, "1", "--page-token", page["next_page_token"]
    )
    assert [e["name"] for e in rest["evaluations"]] == [evaluated.first["name"]]
    assert rest["next_page_token"] == ""

    code, _, err = cli.run(
        "evaluations", "list", evaluated.model, "1", "--page-size", "1", output="table"
    )
    assert code == 0 and "next page: --page-token " in err

    cli.json("alias", "set", evaluated.model, "champion", "1")
    code, out, err = cli.run("evaluations", "list", evaluated.model, "@champion")
    assert code == 0, err
    assert [e["name"] for e in json.loads(out)["evaluations"]] == [
        evaluated.second["name"],
        evaluated.first["name"],
    ]
    assert "@champion points at" in err


def test_get_by_full_name_and_by_id_shows_what_evaluate_wait_shows(
    cli: Cli, evaluated: Evaluated
) -> None:
    name = evaluated.second["name"]
    eval_id = name.rsplit("/", 1)[1]
    assert cli.json("evaluations", "get", name) == evaluated.second
    assert cli.json("evaluations", "get", evaluated.model, "1", eval_id) == evaluated.second
    for argv in ([name], [evaluated.model, "1", eval_id]):
        code, out, err = cli.run("evaluations", "get", *argv, output="table")
        assert code == 0, err
        assert out == evaluated.second_table
        assert name in out and "roc_auc" in out

    cli.json("alias", "set", evaluated.model, "champion", "1")
    got = cli.json("evaluations", "get", evaluated.model, "@champion", eval_id)
    assert got == evaluated.second


def test_an_unknown_evaluation_is_not_found(
    cli: Cli, evaluated: Evaluated, trained_model: TrainedModel
) -> None:
    missing = f"models/{evaluated.model}/versions/1/evaluations/ev-{'0' * 20}"
    for argv in ([missing], [evaluated.model, "1", f"ev-{'0' * 20}"]):
        code, out, err = cli.run("evaluations", "get", *argv)
        assert (code, out) == (3, ""), err
        assert "NOT_FOUND" in err and "EVALUATION_NOT_FOUND" in err
    # Another version's evaluation is not this one's.
    cli.json("versions", "register", evaluated.model, "--onnx", str(trained_model.onnx))
    eval_id = evaluated.first["name"].rsplit("/", 1)[1]
    code, out, err = cli.run("evaluations", "get", evaluated.model, "2", eval_id)
    assert (code, out) == (3, "") and "EVALUATION_NOT_FOUND" in err
    code, out, err = cli.run("evaluations", "list", "nosuch-model", "1")
    assert (code, out) == (3, "") and "MODEL_NOT_FOUND" in err


def test_a_version_without_evaluations_lists_none(cli: Cli, trained_model: TrainedModel) -> None:
    model = unique()
    cli.json("models", "create", model)
    cli.json("versions", "register", model, "--onnx", str(trained_model.onnx))
    assert cli.json("evaluations", "list", model, "1") == {
        "evaluations": [],
        "next_page_token": "",
    }
    code, out, err = cli.run("evaluations", "list", model, "1", output="table")
    assert code == 0, err
    assert "name" in out and "models/" not in out and "next page" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["ev-3f2a"], "MODEL VERSION ID"),
        (["fraud", "3"], "give the evaluation's ID"),
        (["fraud", "3", "models/fraud/versions/3/evaluations/ev-1"], "id alone"),
        (["fraud", "three", "ev-1"], "give a version number or @ALIAS"),
    ],
)
def test_get_usage_errors(cli: Cli, argv: list[str], says: str) -> None:
    code, out, err = cli.run("evaluations", "get", *argv)
    assert (code, out) == (2, ""), err
    assert says in err
