"""`modelplane logs read|compact` on a log written by the real writer."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log, parse_time

NOW = datetime.now(UTC).timestamp()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A log of 3 requests: two hours ago (v1, champion), now (v1 shadow, v2 candidate)."""
    directory = tmp_path / "log"
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    p = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
        writer.append(
            PredictionBatch(
                "m", "1", ["old"], [2], {"x": x[:2]}, {"p": p[:2]}, timestamps=NOW - 7200
            )
        )
        writer.append(
            PredictionBatch(
                "m", "1", ["new"], [1], {"x": x[2:3]}, {"p": p[2:3]}, arm="shadow", timestamps=NOW
            )
        )
        writer.append(
            PredictionBatch(
                "m", "2", ["v2"], [3], {"x": x[3:]}, {"p": p[3:]}, arm="candidate", timestamps=NOW
            )
        )
    return directory


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert main(["--output", "json", *argv]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list)
    return data


def test_read_filters(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    everything = _json(capsys, "logs", "read", str(log_dir))
    assert [(r["request_id"], r["row"]) for r in everything] == [
        ("old", 0),
        ("old", 1),
        ("new", 0),
        ("v2", 0),
        ("v2", 1),
        ("v2", 2),
    ]
    recent = _json(capsys, "logs", "read", str(log_dir), "--since", "-1h")
    assert {r["request_id"] for r in recent} == {"new", "v2"}
    older = _json(capsys, "logs", "read", str(log_dir), "--until=-1h")
    assert {r["request_id"] for r in older} == {"old"}
    iso = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = _json(capsys, "logs", "read", str(log_dir), "--since", iso, "--until", "-1h")
    assert {r["request_id"] for r in window} == {"old"}
    v2 = _json(capsys, "logs", "read", str(log_dir), "--model-version", "2")
    assert {r["request_id"] for r in v2} == {"v2"} and v2[0]["out_p"] == pytest.approx([0.6, 0.7])
    shadow = _json(capsys, "logs", "read", str(log_dir), "--arm", "shadow", "--columns", "x_1")
    assert shadow == [{"x_1": 5.0}]


def test_read_csv_and_parquet(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", "read", str(log_dir), "--format", "csv", "--model-version", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["x_0"] for r in rows] == ["6", "8", "10"]
    assert [r["out_p[1]"] for r in rows] == [str(np.float32(0.7)), "0.9", str(np.float32(1.1))]
    out = tmp_path / "all.parquet"
    assert main(["logs", "read", str(log_dir), "--format", "parquet", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 6 and table.column("x_0").to_pylist() == [0, 2, 4, 6, 8, 10]


def test_compact_to_path_and_file_uri(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target in (str(tmp_path / "lake"), f"file://{tmp_path / 'lake2'}"):
        assert main(["--output", "json", "logs", "compact", str(log_dir), "--out", target]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["rows"] == 6
    for lake in (tmp_path / "lake", tmp_path / "lake2"):
        versions = {p.name for p in lake.glob("date=*/model_name=*/model_version=*")}
        assert versions == {"model_version=1", "model_version=2"}
        table = ds.dataset(lake, format="parquet", partitioning="hive").to_table()
        assert sorted(table.column("request_id").to_pylist()) == sorted(
            ["old", "old", "new", "v2", "v2", "v2"]
        )


def test_bad_input_gives_usage_errors(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["logs", "read", str(tmp_path / "missing")], "no prediction log directory"),
        (["logs", "read", str(log_dir), "--since", "yesterday"], "is not a time"),
        (["logs", "read", str(log_dir), "--format", "parquet"], "needs --out"),
        (["logs", "read", str(log_dir), "--columns", "nope"], "no column nope"),
        (["logs", "compact", str(log_dir), "--out", "nosuch://x"], "not a path or filesystem"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert main(["logs", "read", str(log_dir), "--arm", "blue"]) == 2


def test_parse_time_forms() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_time("-90m", now) == datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    assert parse_time("2026-11-26", now) == datetime(2026, 11, 26, tzinfo=UTC)
    assert parse_time("2026-11-26T13:00:00+01:00", now) == now
    assert parse_time("now", now) == now
    with pytest.raises(ValueError, match="relative to now"):
        parse_time("-1 fortnight", now)


def test_cli_module_does_not_import_pyarrow() -> None:
    code = "import sys, modelplane.cli.logs; print('pyarrow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
