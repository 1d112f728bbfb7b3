"""``modelplane evaluate --wait`` in table mode shows the report's warnings on stderr (one
``warning: CODE message`` line each); with ``--output json`` stdout stays one JSON document
that holds them in its report."""

from __future__ import annotations

import json

import pytest

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def test_evaluate_shows_the_reports_warnings(cli: Cli, trained_model: TrainedModel) -> None:
    name = unique()
    cli.json("models", "create", name)
    cli.json("versions", "register", name, "--onnx", str(trained_model.onnx))
    argv = ["evaluate", name, "1", "--data", str(trained_model.holdout), "--label", "target"]
    argv += ["--compare-to", "nosuch", "--wait"]

    code, out, err = cli.run(*argv, output="table")
    assert code == 0, err
    [line] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert line.startswith("warning: COMPARE_ALIAS_NOT_FOUND ") and "'nosuch'" in line

    code, out, err = cli.run(*argv)
    assert code == 0, err
    report = json.loads(out)["report"]
    assert [w["code"] for w in report["warnings"]] == ["COMPARE_ALIAS_NOT_FOUND"]
    assert "warning:" not in err
