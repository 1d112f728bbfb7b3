"""`modelplane logs read` arguments: relative times of any unit or several parts, and an
``--out`` that cannot be written named as given. The log is written by the real writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log, parse_time

NOW = datetime.now(UTC).timestamp()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Requests of ten days ago, two hours ago and now."""
    directory = tmp_path / "log"
    with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
        for rid, age in (("ten-days", 10 * 86400), ("two-hours", 7200), ("now", 0)):
            x = np.ones((1, 2), np.float32)
            writer.append(PredictionBatch("m", "1", [rid], [1], {"x": x}, timestamps=NOW - age))
    return directory


def _ids(capsys: pytest.CaptureFixture[str], *argv: str) -> list[object]:
    assert main(["--output", "json", "logs", "read", *argv, "--columns", "request_id"]) == 0
    return [r["request_id"] for r in json.loads(capsys.readouterr().out)]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (["--since", "-1w"], ["two-hours", "now"]),
        (["--since", "-1h30m"], ["now"]),
        (["--until", "-1h30m"], ["ten-days", "two-hours"]),
        (["--since", "-2w", "--until", "-1w"], ["ten-days"]),
        (["--since", "-1.5h"], ["now"]),
    ],
)
def test_relative_times_with_units_are_values(
    log_dir: Path, capsys: pytest.CaptureFixture[str], window: list[str], expected: list[str]
) -> None:
    assert _ids(capsys, str(log_dir), *window) == expected


def test_a_relative_time_that_is_no_time_is_a_usage_error_naming_it(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for since in ("-1fortnight", "-1h30", "-1y"):
        assert main(["logs", "read", str(log_dir), "--since", since]) == 2
        err = capsys.readouterr().err
        assert f"{since!r} is not a time" in err and "expected one argument" not in err


def test_parse_time_of_several_parts_and_weeks() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_time("-1h30m", now) == datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    assert parse_time("-1w", now) == datetime(2026, 11, 19, 12, 0, tzinfo=UTC)
    assert parse_time("-1w1d12h", now) == datetime(2026, 11, 18, 0, 0, tzinfo=UTC)
    assert parse_time("-2m30s", now) == datetime(2026, 11, 26, 11, 57, 30, tzinfo=UTC)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_out_file_that_cannot_be_written_is_named_as_given(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    missing = tmp_path / "no-such-folder" / "x.parquet"
    assert main(["logs", "read", str(log_dir), "--format", fmt, "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: No such file or directory" in err and ".part" not in err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["logs", "read", str(log_dir), "--format", fmt, "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: Is a directory" in err and ".part" not in err
    assert list(folder.iterdir()) == [] and list(tmp_path.glob(".*.part")) == []
