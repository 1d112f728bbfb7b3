"""The CLI's exit-code contract at its edges, against a real server: a bug is reported on one
line with its own code (never as exit 1, "a check failed"), and bad global options, waits,
rollout settings and JSON output keep to the table in the README."""

from __future__ import annotations

import pytest

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane, capsys: pytest.CaptureFixture[str]) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(controlplane.address, capsys)


def test_an_unexpected_exception_is_one_line_and_exit_70(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique()
    assert cli.json("models", "create", name)["name"] == f"models/{name}"

    def broken(self: Client, model: str) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(Client, "get_model", broken)
    code, out, err = cli.run("models", "get", name)
    assert (code, out) == (70, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error in the CLI (models): KeyError")


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
def test_a_global_timeout_must_be_positive_seconds(cli: Cli, timeout: str) -> None:
    code, out, err = cli.run("--timeout", timeout, "models", "list")
    assert (code, out) == (2, "") and "--timeout" in err
