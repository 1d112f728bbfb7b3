"""Whole-number CLI options refuse a value the request's field cannot hold, or a negative one
where it means nothing, as a usage error naming the option (exit 2), before anything is sent
(the server address here refuses connections, so a value that got through would exit 4)."""

from __future__ import annotations

import pytest

from modelplane.cli import main

INT32_OVER = str(2**31)
INT64_OVER = str(2**63)
DEAD = ["--server", "127.0.0.1:1", "--timeout", "1"]
START = ["rollout", "start", "fraud", "--strategy", "canary", "--candidate"]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["models", "list", "--page-size", INT32_OVER], "--page-size"),
        (["models", "list", "--page-size", "-1"], "--page-size"),
        (["versions", "list", "fraud", "--page-size", INT32_OVER], "--page-size"),
        (["operations", "list", "--page-size", INT32_OVER], "--page-size"),
        (["rollout", "events", "fraud", "--page-size", INT32_OVER], "--page-size"),
        (["rollout", "events", "fraud", "--limit", "-1"], "--limit"),
        ([*START, INT64_OVER], "--candidate"),
        ([*START, "0"], "--candidate"),
        (
            [*START, "2", "--min-requests", INT64_OVER],
            "--min-requests",
        ),
        (
            [*START, "2", "--min-requests", "-3"],
            "--min-requests",
        ),
        (
            ["deployments", "create", "fraud", "--model", "m", "--champion", INT64_OVER],
            "--champion",
        ),
        (["deployments", "update", "fraud", "--drift-min-rows", INT64_OVER], "--drift-min-rows"),
        (["deployments", "update", "fraud", "--drift-min-rows", "-1"], "--drift-min-rows"),
        (["policies", "get", "gate", "--revision", INT64_OVER], "--revision"),
        (["audit", "list", "--limit", "-1"], "--limit"),
        (["logs", "read", "/nonexistent", "--limit", "-1"], "--limit"),
    ],
)
def test_an_out_of_range_whole_number_is_a_usage_error(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*DEAD, *argv]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "out of range" in err
    assert "internal error" not in err


def test_the_largest_page_size_gets_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*DEAD, "models", "list", "--page-size", str(2**31 - 1)]) == 4
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--split", "--shadow-fraction"])
@pytest.mark.parametrize("value", ["nan", "0", "-1"])
def test_a_rollout_amount_that_is_no_number_above_0_says_what_it_got(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, NaN was refused as "must be above 0", which it is not."""
    assert main([*DEAD, *START, "2", "--strategy", "ab", option, value]) == 2
    err = capsys.readouterr().err
    shown = str(float(value))
    assert f"{option} must be a number above 0, not {shown}" in err
    assert "internal error" not in err


@pytest.mark.parametrize("value", ["-1", "0"])
def test_min_requests_names_the_range_it_takes(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """0 is refused too (it would mean "the default" on the wire): the range starts at 1."""
    assert main([*DEAD, *START, "2", "--min-requests", value]) == 2
    assert f"'{value}' is out of range: use 1 to" in capsys.readouterr().err
