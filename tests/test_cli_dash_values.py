"""A value that starts with '-' after an option: argparse reads it as an option, and the error
says how to pass it; written OPTION=VALUE it reaches the command's own checks."""

from __future__ import annotations

import pytest

from modelplane.cli import main


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (
            [
                "rollout",
                "start",
                "d",
                "--candidate",
                "2",
                "--strategy",
                "canary",
                "--steps",
                "-5,50",
            ],
            "--steps",
        ),
        (["--timeout", "-3s", "models", "list"], "--timeout"),
        (
            ["rollout", "start", "d", "--candidate", "2", "--strategy", "canary", "--steps"],
            "--steps",
        ),
    ],
)
def test_a_missing_value_names_the_option_equals_form(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected one argument" in err
    assert f"is written {option}=VALUE" in err


def test_the_equals_form_reaches_the_value_check(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rollout", "start", "d", "--candidate", "2", "--strategy", "canary", "--steps=-x,50"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--steps '-x,50': use percents" in err and "expected one argument" not in err


def test_other_usage_errors_get_no_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "start", "d", "--candidate", "2", "--strategy", "bogus"]) == 2
    assert "=VALUE" not in capsys.readouterr().err
