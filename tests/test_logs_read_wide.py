"""`modelplane logs read DIR` of a wide tabular model: a table too wide for the terminal (240
columns when stdout is not one, as under pytest) leaves the feature columns out, keeps the
record and output columns whole, and says on stderr how to see the rest. --columns,
--output json and --format csv are unchanged. Logs written by the real writer."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from modelplane.cli import logs as logs_cli
from modelplane.cli import main
from sidecar.predlog import (
    BASE_SCHEMA,
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    open_prediction_log,
)

FEATURES = [f"feature_{i:02d}" for i in range(30)]
NOTE = re.compile(r"note: (\d+) feature columns? left out")


def _write(log: Path, x: np.ndarray, names: list[str] | None = None) -> None:
    rows = len(x)
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        writer.append(
            PredictionBatch(
                "churn",
                "1",
                ["r1", "r2"],
                [rows - 1, 1],
                {"x": x},
                {"score": np.linspace(0, 1, rows).astype(np.float32)},
                feature_names=names,
            )
        ).result(10)
        writer.append_rejected(
            RejectedRequest("r3", "INVALID_ARGUMENT", "BAD_INPUT", "x is 2-D", "churn", "1")
        ).result(10)


@pytest.fixture
def wide_log(tmp_path: Path) -> Path:
    log = tmp_path / "wide"
    _write(log, np.random.default_rng(0).random((3, 30)).astype(np.float32), FEATURES)
    return log


def _headers(out: str) -> list[str]:
    """The header cells of the table printed (one line: no header was cut or wrapped)."""
    line = next(x for x in out.splitlines() if x.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_a_table_too_wide_leaves_the_features_out_and_says_so(
    wide_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", "read", str(wide_log)]) == 0
    captured = capsys.readouterr()
    assert _headers(captured.out) == [*BASE_SCHEMA.names, "out_score"]
    assert "4 prediction records" in captured.out and "BAD_INPUT" in captured.out
    assert "…" not in captured.out  # no header nor value cut
    note = NOTE.search(captured.err)
    assert note is not None and note.group(1) == "30"
    assert "240 characters" in captured.err
    assert "--columns A,B" in captured.err and "--output json" in captured.err


def test_a_table_that_fits_keeps_its_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "narrow"
    _write(log, np.arange(6, dtype=np.int64).reshape(3, 2))
    assert main(["logs", "read", str(log)]) == 0
    captured = capsys.readouterr()
    assert _headers(captured.out) == [*BASE_SCHEMA.names, "x_0", "x_1", "out_score"]
    assert NOTE.search(captured.err) is None


def test_columns_json_and_csv_are_unchanged(
    wide_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["logs", "read", str(wide_log)]
    assert main([*base, "--columns", "request_id,feature_00,feature_29,out_score"]) == 0
    captured = capsys.readouterr()
    assert _headers(captured.out) == ["request_id", "feature_00", "feature_29", "out_score"]
    assert NOTE.search(captured.err) is None
    # Every feature asked for is shown, however wide the table: the user chose them.
    assert main([*base, "--columns", ",".join(["request_id", *FEATURES])]) == 0
    captured = capsys.readouterr()
    assert NOTE.search(captured.err) is None
    assert captured.out.splitlines()[1].count("┳") == len(FEATURES)  # 31 columns drawn

    assert main(["--output", "json", *base]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert len(records) == 4 and set(FEATURES) <= set(records[0])
    assert NOTE.search(captured.err) is None

    assert main([*base, "--format", "csv"]) == 0
    captured = capsys.readouterr()
    header = next(csv.reader(io.StringIO(captured.out)))
    assert header == [*BASE_SCHEMA.names, *FEATURES, "out_score"]
    assert NOTE.search(captured.err) is None

    out = wide_log.parent / "wide.json"
    assert main([*base, "--out", str(out)]) == 0
    assert set(FEATURES) <= set(json.loads(out.read_text())[0])
    assert NOTE.search(capsys.readouterr().err) is None


def test_a_log_without_feature_columns_is_shown_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "refused"
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        writer.append_rejected(
            RejectedRequest("r", "INVALID_ARGUMENT", "BAD_INPUT", "word " * 200, "m", "1")
        ).result(10)
    assert main(["logs", "read", str(log)]) == 0
    captured = capsys.readouterr()
    assert _headers(captured.out) == list(BASE_SCHEMA.names)
    assert NOTE.search(captured.err) is None


def test_a_long_message_that_wraps_does_not_hide_the_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed record's message wraps inside its column: no word is cut, so the features,
    which show what broke the model, stay."""
    log = tmp_path / "long"
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        writer.append_rejected(
            RejectedRequest(
                "r",
                "INVALID_ARGUMENT",
                "BAD_INPUT",
                "the input holds a value out of range " * 10,
                "m",
                "1",
                inputs={"x": np.array([[1, 2]], np.int64)},
            )
        ).result(10)
    assert main(["logs", "read", str(log)]) == 0
    captured = capsys.readouterr()
    assert _headers(captured.out) == [*BASE_SCHEMA.names, "x_0", "x_1"]
    assert NOTE.search(captured.err) is None


def test_without_riches_layout_the_columns_are_judged_at_their_longest_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rich that lays tables out by other means: a table fits when every column fits at
    its longest word."""
    monkeypatch.delattr(Table, "_calculate_column_widths")
    console = Console(width=60)
    record = {"a": "x" * 20, "b": "y y y"}
    assert not logs_cli._cuts_words(console, [record], ["a", "b"])  # 23 + 4 + 3 borders
    record["b"] = "y" * 34  # 23 + 37 + 3 > 60
    assert logs_cli._cuts_words(console, [record], ["a", "b"])
