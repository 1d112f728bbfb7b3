"""Schemas that change between write rounds: a widened type or clashing versions must not open
a new file on every round, and every row must read back with its own values."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    list_log_files,
    open_prediction_log,
    read_logs,
)
from sidecar.predlog.fileset import MAX_OPEN_FILES


def _rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["request_id"]: r for r in table.to_pylist()}


def _file_schemas(directory: Path) -> list[pa.Schema]:
    schemas = []
    for path in list_log_files(directory):
        with pa.OSFile(str(path)) as f:
            schemas.append(pa.ipc.open_stream(f).schema)
    return schemas


def test_one_widening_rejected_request_does_not_rotate_every_round(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    with open_prediction_log(settings) as writer:

        def served(i: int) -> None:
            x = np.array([[i, i + 0.5, -i]], np.float32)
            y = np.array([i / 4], np.float32)
            writer.append(PredictionBatch("m", "1", [f"a{i}"], [1], {"x": x}, {"y": y})).result(10)

        for i in range(3):
            served(i)
        # A client sends float64 to the float32 model: its features are logged as sent.
        writer.append_rejected(
            RejectedRequest(
                "bad",
                "INVALID_ARGUMENT",
                "DTYPE",
                model_name="m",
                model_version="1",
                inputs={"x": np.array([[0.1, 0.2, 0.3]], np.float64)},
            )
        ).result(10)
        for i in range(3, 23):
            served(i)
    schemas = _file_schemas(tmp_path)
    # The float32 file, then one float64 file that takes every later round.
    assert [s.field("x_0").type for s in schemas] == [pa.float32(), pa.float64()]
    rows = _rows_by_id(read_logs(tmp_path))
    assert len(rows) == 24
    assert [rows["bad"][f"x_{j}"] for j in range(3)] == [0.1, 0.2, 0.3]
    for i in range(23):
        row = rows[f"a{i}"]
        assert [row["x_0"], row["x_1"], row["x_2"]] == [i, i + 0.5, -i]
        assert row["out_y"] == i / 4


def test_versions_with_clashing_outputs_keep_one_file_each(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    x = np.ones((1, 3), np.float32)
    with open_prediction_log(settings) as writer:
        for i in range(20):
            v1 = PredictionBatch("m", "1", [f"a{i}"], [1], {"x": x * i}, {"y": np.array([i])})
            writer.append(v1).result(10)
            scores = np.array([[i, -i]], np.float32)
            v2 = PredictionBatch("m", "2", [f"b{i}"], [1], {"x": x * i}, {"y": scores})
            writer.append(v2).result(10)
            assert len(writer.open_files) <= 2
        # Both in one round: still the same two files.
        a = writer.append(PredictionBatch("m", "1", ["a20"], [1], {"x": x}, {"y": np.array([7])}))
        b = writer.append(
            PredictionBatch("m", "2", ["b20"], [1], {"x": x}, {"y": np.array([[7, 8]], np.float32)})
        )
        a.result(10), b.result(10)
    assert len(list_log_files(tmp_path)) == 2
    v1_rows = _rows_by_id(read_logs(tmp_path, model_version="1"))
    v2_rows = _rows_by_id(read_logs(tmp_path, model_version="2"))
    assert len(v1_rows) == len(v2_rows) == 21
    for i in range(20):
        assert v1_rows[f"a{i}"]["out_y"] == i and v1_rows[f"a{i}"]["x_2"] == i
        assert v2_rows[f"b{i}"]["out_y"] == [i, -i] and v2_rows[f"b{i}"]["x_0"] == i
    assert v1_rows["a20"]["out_y"] == 7 and v2_rows["b20"]["out_y"] == [7, 8]


def test_open_files_stay_bounded_with_many_clashing_schemas(tmp_path: Path) -> None:
    # Each output is a number, a pair or a flag: any two of these 27 combinations clash.
    values = [np.array([1.5], np.float32), np.array([[1, 2]], np.float32), np.array([True])]
    combos = list(itertools.product(range(3), repeat=3))
    assert len(combos) > MAX_OPEN_FILES
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    with open_prediction_log(settings) as writer:
        for r in range(2):
            for k, combo in enumerate(combos):
                outputs = {name: values[c] for name, c in zip("abc", combo, strict=True)}
                x = np.full((1, 2), k, np.float32)
                batch = PredictionBatch("m", str(k), [f"{r}-{k}"], [1], {"x": x}, outputs)
                writer.append(batch).result(10)
                assert len(writer.open_files) <= MAX_OPEN_FILES
    for k, combo in enumerate(combos):
        rows = read_logs(tmp_path, model_version=str(k)).to_pylist()
        assert sorted(r["request_id"] for r in rows) == ["0-" + str(k), "1-" + str(k)]
        expected = [values[c].tolist()[0] for c in combo]
        for row in rows:
            assert [row["out_a"], row["out_b"], row["out_c"], row["x_0"]] == [*expected, k]
