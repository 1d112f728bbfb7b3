"""Reading several model versions whose columns differ in type: exact widenings merge (as the
writer and compaction merge them, :func:`sidecar.predlog.schemas.unify`), others are refused
whatever the values, naming the column, its types and versions; float16 read as float32 for
DuckDB on request."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log, read_logs


def _write(log: Path, version: str, rid: str, x: np.ndarray, **outputs: np.ndarray) -> None:
    """One sidecar run of ``version``: one request of ``x``'s rows."""
    settings = PredictionLogSettings(dir=log, durability="sync")
    with open_prediction_log(settings) as writer:
        batch = PredictionBatch("m", version, [rid], [len(x)], {"x": x}, outputs)
        writer.append(batch).result(10)


@pytest.mark.parametrize("big", [7, 2**53 - 1, 2**53 + 1])
def test_int64_and_float32_columns_are_refused_whatever_the_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], big: int
) -> None:
    log = tmp_path / "log"
    _write(log, "1", "f", np.array([[0.5, 1.5]], np.float32))
    _write(log, "3", "i", np.array([[7, big]], np.int64))
    with pytest.raises(ValueError) as err:
        read_logs(log)
    message = str(err.value)
    for part in ("'x_0' is float32 (model version 1) and int64 (model version 3)", "'x_1'"):
        assert part in message
    assert main(["logs", "read", str(log)]) == 2
    assert "--model-version V: 1 or 3" in capsys.readouterr().err
    # One version at a time, or without the clashing columns, reads every value as logged.
    assert read_logs(log, model_version="3").select(["x_0", "x_1"]).to_pylist() == [
        {"x_0": 7, "x_1": big}
    ]
    both = read_logs(log, columns=["request_id", "model_version"])
    assert both.to_pylist() == [
        {"request_id": "f", "model_version": "1"},
        {"request_id": "i", "model_version": "3"},
    ]


def test_exact_widenings_still_merge(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _write(log, "1", "a", np.array([[0.1, 1.0]], np.float32))
    _write(log, "2", "b", np.array([[0.1, 2.0]], np.float64))
    _write(log, "3", "c", np.array([[1, 2]], np.int32))
    table = read_logs(log)
    assert table.schema.field("x_0").type == pa.float64()
    got = table.column("x_0").to_pylist()
    assert got == [float(np.float32(0.1)), 0.1, 1.0]


def test_float16_widened_for_duckdb(tmp_path: Path) -> None:
    log = tmp_path / "log"
    x = np.array([[0.5, 1.5], [2.25, -3.0]], np.float16)
    _write(log, "1", "h", x, y=x.copy())
    logs = read_logs(log, widen_float16=True)
    assert logs.schema.field("x_0").type == pa.float32()
    assert logs.schema.field("out_y").type.value_type == pa.float32()
    query = "SELECT count(*), sum(x_0), sum(x_1), sum(out_y[2]) FROM logs"
    assert duckdb.sql(query).fetchall() == [(2, 2.75, -1.5, -1.5)]
    # As logged without the option; an empty window is widened too.
    assert read_logs(log).schema.field("x_0").type == pa.float16()
    empty = read_logs(log, until="2000-01-01", widen_float16=True)
    assert empty.num_rows == 0 and empty.schema.field("x_1").type == pa.float32()
