"""Several models in one log tree (a folder of several sidecars' log dirs, or one dir reused
for another model), each with a version ``1`` as ``--model-version`` has by default: records
are read one model at a time (``read_logs(model_name=)``, ``logs read --model-name``), a
type clash names the models and versions involved and the filter that reads them apart, and
compaction writes each model to its own partition, so that DuckDB reads an INT64 feature of
one exactly instead of casting it to another's FLOAT."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from modelplane.cli import main
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    compact,
    list_log_files,
    open_prediction_log,
    read_logs,
)

BIG = 2**53 + 1  # the first int64 a float64 (let alone a float32) cannot hold


def _run(log: Path, model: str, version: str, rid: str, x: np.ndarray, **out: np.ndarray) -> None:
    """One sidecar run of ``model`` ``version``: one request of ``x``'s rows."""
    settings = PredictionLogSettings(dir=log, durability="sync")
    with open_prediction_log(settings) as writer:
        batch = PredictionBatch(model, version, [rid], [len(x)], {"x": x}, out)
        writer.append(batch).result(10)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """fraud (x FP32, y a scalar) and churn (x INT64, y two wide), both version 1, each in its
    own sidecar's log dir under one folder."""
    root = tmp_path / "shared"
    fraud_x = np.array([[0.5, 1.5]], np.float32)
    _run(root / "fraud", "fraud", "1", "f", fraud_x, y=np.array([0.25], np.float32))
    churn_x = np.array([[7, BIG]], np.int64)
    _run(root / "churn", "churn", "1", "c", churn_x, y=np.array([[0.1, 0.9]], np.float32))
    return root


def test_one_model_at_a_time_reads_every_value_as_logged(shared: Path) -> None:
    churn = read_logs(shared, model_name="churn")
    assert churn.column("model_name").to_pylist() == ["churn"]
    assert churn.select(["x_0", "x_1"]).to_pylist() == [{"x_0": 7, "x_1": BIG}]
    fraud = read_logs(shared, model_name="fraud", model_version="1")
    assert fraud.select(["request_id", "x_0", "out_y"]).to_pylist() == [
        {"request_id": "f", "x_0": 0.5, "out_y": 0.25}
    ]
    assert read_logs(shared, model_name="nobody").num_rows == 0


def test_a_clash_between_models_names_them_and_suggests_the_model_name(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError) as err:
        read_logs(shared)
    message = str(err.value)
    assert "'x_0' is int64 (model churn version 1) and float32 (model fraud version 1)" in message
    assert "read one model at a time (--model-name N: churn or fraud)" in message
    assert "--model-version" not in message  # both are version 1: that would not help
    assert main(["logs", "read", str(shared)]) == 2
    assert "--model-name N: churn or fraud" in capsys.readouterr().err
    assert main(["--output", "json", "logs", "read", str(shared), "--model-name", "churn"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["request_id"] == "c" and int(record["x_1"]) == BIG


def test_clashes_that_need_both_filters_or_a_time_window_say_so(tmp_path: Path) -> None:
    both = tmp_path / "both"
    _run(both / "a1", "a", "1", "a1", np.array([[0.5]], np.float32))
    _run(both / "a2", "a", "2", "a2", np.array([[2]], np.int64))
    _run(both / "b1", "b", "1", "b1", np.array([[3]], np.int64))
    with pytest.raises(ValueError) as err:
        read_logs(both)
    message = str(err.value)
    assert "float32 (model a version 1) and int64 (model a version 2; model b version 1)" in message
    assert "(--model-name N --model-version V: a 1, a 2 or b 1)" in message
    assert read_logs(both, model_name="a", model_version="2").column("x_0").to_pylist() == [2]

    # One model version whose input changed type (a model replaced without a new version):
    # no filter of model or version reads its records apart.
    reused = tmp_path / "reused"
    _run(reused, "m", "1", "old", np.array([[0.5]], np.float32))
    _run(reused, "m", "1", "new", np.array([[2]], np.int64))
    with pytest.raises(ValueError, match=r"model version 1\) and int64 \(model version 1\)") as err:
        read_logs(reused)
    assert "--since, --until" in str(err.value)


def test_compaction_gives_each_model_its_partition(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "parquet"
    result = compact(shared, str(out))
    assert result.rows == 2
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    folders = sorted(str(Path(p).parent.relative_to(out)) for p in result.files)
    assert folders == [
        f"date={day}/model_name=churn/model_version=1",
        f"date={day}/model_name=fraud/model_version=1",
    ]
    churn = pq.read_table(next((out / folders[0]).glob("*.parquet")))
    assert churn.select(["x_0", "x_1"]).to_pylist() == [{"x_0": 7, "x_1": BIG}]
    # DuckDB reading one model's partitions gets the INT64 exactly: no FLOAT from the other.
    query = (
        f"SELECT model_name, x_1 FROM read_parquet('{out}/*/model_name=churn/*/*.parquet', "
        "hive_partitioning = true, union_by_name = true, "
        "hive_types = {'model_name': VARCHAR, 'model_version': VARCHAR})"
    )
    assert duckdb.sql(query).fetchall() == [("churn", BIG)]


def test_compacting_again_replaces_files_of_the_layout_without_model_name(
    shared: Path, tmp_path: Path
) -> None:
    """An archive compacted before the model name was a partition holds each log file's rows
    under date=D/model_version=V: compacting the same log again moves them, never doubles
    them."""
    out = tmp_path / "parquet"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    legacy = out / f"date={day}" / "model_version=1"
    legacy.mkdir(parents=True)
    for path in list_log_files(shared):
        table = read_logs(path.parent).drop_columns(["model_version"])
        pq.write_table(table, legacy / f"{path.stem}-0.parquet")
    expired = legacy / "20200101T000000.000000Z-p1-000001-0.parquet"  # its log file is gone
    pq.write_table(read_logs(shared / "fraud").drop_columns(["model_version"]), expired)
    compact(shared, str(out))
    assert sorted(legacy.iterdir()) == [expired]
    rows = duckdb.sql(
        f"SELECT request_id FROM read_parquet('{out}/**/*.parquet', union_by_name = true)"
    ).fetchall()
    assert sorted(r for (r,) in rows) == ["c", "f", "f"]
