"""`logs read --since/--until` with more fractional digits than the log's microseconds (as
pandas, DuckDB or Spark print nanoseconds): the window [since, until) stays exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log, read_logs

T = datetime(2026, 11, 29, 6, 56, 18, 224222, tzinfo=UTC)
US = timedelta(microseconds=1)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Requests ``before``, ``at`` and ``after`` stamped one microsecond apart around T."""
    log = tmp_path / "log"
    ids = ["before", "at", "after"]
    stamps = [(T + k * US).timestamp() for k in (-1, 0, 1)]
    x = np.ones((3, 2), np.float32)
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        batch = PredictionBatch("m", "1", ids, [1, 1, 1], {"x": x}, timestamps=stamps)
        writer.append(batch).result(10)
    logged = read_logs(log).select(["request_id", "timestamp"]).to_pylist()
    assert [tuple(r.values()) for r in logged] == [("before", T - US), ("at", T), ("after", T + US)]
    return log


def _ids(log: Path, capsys: pytest.CaptureFixture[str], *window: str) -> list[str]:
    argv = ["--output", "json", "logs", "read", str(log), "--columns", "request_id", *window]
    assert main(argv) == 0
    return [r["request_id"] for r in json.loads(capsys.readouterr().out)]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (["--until", "2026-11-29T06:56:18.224222999Z"], ["before", "at"]),
        (["--until", "2026-11-29T06:56:18.224222000Z"], ["before"]),
        (["--until", "2026-11-29T07:56:18.224221001+01:00"], ["before"]),
        (["--since", "2026-11-29T06:56:18.224222001Z"], ["after"]),
        (["--since", "2026-11-29T06:56:18.2242220Z"], ["at", "after"]),
        (["--since", "2026-11-29T06:56:18.224221999", "--until", "2026-11-29T06:56:18.2242229"],
         ["at"]),
    ],
)  # fmt: skip
def test_a_window_given_in_nanoseconds_is_exact(
    log: Path, capsys: pytest.CaptureFixture[str], window: list[str], expected: list[str]
) -> None:
    assert _ids(log, capsys, *window) == expected


def test_read_logs_takes_the_same_strings(log: Path) -> None:
    window = read_logs(
        log, since="2026-11-29T06:56:18.224221000001Z", until="2026-11-29T06:56:18.224222999Z"
    )
    assert window.column("request_id").to_pylist() == ["at"]
