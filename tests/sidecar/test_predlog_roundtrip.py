"""The prediction log's records: written by the real writer, read back with plain pyarrow."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from prometheus_client import CollectorRegistry

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    compact,
    join_labels,
    list_log_files,
    open_prediction_log,
    read_logs,
)
from sidecar.predlog.convert import uuid4_strings

FEATURES = ["age", "income", "zip", "score", "tenure", "clicks"]


def _settings(tmp_path: Path, **kw: Any) -> PredictionLogSettings:
    return PredictionLogSettings(dir=tmp_path / "log", **kw)


def _read_with_pyarrow(directory: Path) -> pa.Table:
    """Every file opened with pyarrow's own stream reader, independent of read_logs."""
    tables = []
    for path in sorted(directory.rglob("*.arrows")):
        with pa.OSFile(str(path)) as f:
            tables.append(pa.ipc.open_stream(f).read_all())
    return pa.concat_tables(tables, promote_options="permissive")


def _random_batches(rng: np.random.Generator, n_batches: int) -> list[PredictionBatch]:
    batches = []
    serial = 0
    for b in range(n_batches):
        n_req = int(rng.integers(1, 9))
        counts = rng.integers(1, 6, n_req)
        rows = int(counts.sum())
        ids = [f"req-{serial + k}" for k in range(n_req)]
        serial += n_req
        batches.append(
            PredictionBatch(
                model_name="churn",
                model_version=str(1 + b % 2),
                request_ids=ids,
                row_counts=counts,
                inputs={
                    "features": rng.standard_normal((rows, 6)).astype(np.float32),
                    "image": rng.integers(-500, 500, (rows, 2, 2)).astype(np.int16),
                },
                outputs={
                    "probabilities": rng.random((rows, 3)).astype(np.float32),
                    "label": rng.integers(0, 3, rows).astype(np.int64),
                },
                latencies_s=rng.random(n_req) / 100,
                trace_ids=[f"00-{k:032x}-{k:016x}-01" for k in range(n_req)],
                arm=("champion", "candidate", "shadow")[b % 3],
                timestamps=1.7e9 + rng.random(n_req) * 1000,
                feature_names={"features": FEATURES},
            )
        )
    return batches


def test_round_trip_every_row_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    batches = _random_batches(rng, 40)
    registry = CollectorRegistry()
    writer = open_prediction_log(_settings(tmp_path, flush_interval="50ms"), registry=registry)
    tickets = [writer.append(b) for b in batches]
    rejected = [
        RejectedRequest(
            request_id=f"bad-{k}",
            status_code="INVALID_ARGUMENT",
            reason="INPUT_SHAPE_MISMATCH",
            message="input 'features' has shape [1, 5]",
            model_name="churn",
            model_version="1",
            inputs={"features": np.full((1, 5), k, np.float32)},
        )
        for k in range(3)
    ]
    tickets += [writer.append_rejected(r) for r in rejected]
    for t in tickets:
        t.result(10)
    writer.close()

    table = _read_with_pyarrow(tmp_path / "log")
    rows = {(r["request_id"], r["row"]): r for r in table.to_pylist()}
    expected_rows = sum(int(np.sum(b.row_counts)) for b in batches)
    assert len(rows) == table.num_rows == expected_rows + len(rejected)
    for b in batches:
        start = 0
        for i, (rid, count) in enumerate(zip(b.request_ids, b.row_counts, strict=True)):
            for r in range(int(count)):
                rec = rows[(rid, r)]
                x = b.inputs["features"][start + r]
                assert [rec[name] for name in FEATURES] == x.tolist()
                assert rec["image"] == b.inputs["image"][start + r].reshape(-1).tolist()
                assert rec["out_probabilities"] == b.outputs["probabilities"][start + r].tolist()
                assert rec["out_label"] == int(b.outputs["label"][start + r])
                assert rec["model_version"] == b.model_version and rec["arm"] == b.arm
                assert rec["latency_s"] == b.latencies_s[i]  # type: ignore[index]
                assert rec["trace_id"] == b.trace_ids[i]  # type: ignore[index]
                assert rec["timestamp"].timestamp() == pytest.approx(
                    b.timestamps[i],  # type: ignore[index]
                    abs=1e-6,
                )
                assert rec["batch_size"] == int(np.sum(b.row_counts))
                assert rec["status_code"] == "OK" and rec["status_reason"] is None
            start += int(count)
    for k, rej in enumerate(rejected):
        rec = rows[(rej.request_id, 0)]
        assert rec["status_code"] == "INVALID_ARGUMENT"
        assert rec["status_reason"] == "INPUT_SHAPE_MISMATCH"
        assert rec["status_message"] == rej.message
        # The 5 decoded values do not fit the 6 named features: kept as x_0..x_4.
        assert [rec[f"x_{j}"] for j in range(5)] == [float(k)] * 5
        assert rec["age"] is None and rec["out_label"] is None
    assert table.schema.field("image").type == pa.list_(pa.int16(), 4)
    assert table.schema.field("request_id").type == pa.string()
    # read_logs sees the same records as pyarrow's own reader.
    ours = read_logs(tmp_path / "log")
    assert ours.num_rows == table.num_rows
    assert sorted(ours.column("request_id").to_pylist()) == sorted(
        table.column("request_id").to_pylist()
    )
    sizes = sum(p.stat().st_size for p in list_log_files(tmp_path / "log"))
    assert registry.get_sample_value("modelplane_prediction_log_bytes_total") == sizes
    assert registry.get_sample_value(
        "modelplane_prediction_log_records_total", {"kind": "prediction"}
    ) == float(expected_rows)
    assert registry.get_sample_value(
        "modelplane_prediction_log_records_total", {"kind": "rejected"}
    ) == float(len(rejected))
    assert registry.get_sample_value("modelplane_prediction_log_files_total") == len(
        list_log_files(tmp_path / "log")
    )


def test_default_names_and_empty_ids(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    with open_prediction_log(_settings(tmp_path, durability="sync")) as writer:
        writer.append(
            PredictionBatch("m", "1", ["", "", "given"], [1, 2, 1], {"x": x}, {"y": x[:, :1]})
        ).result(10)
    table = read_logs(tmp_path / "log")
    assert table.column_names[-4:] == ["x_0", "x_1", "x_2", "out_y"]
    assert table.schema.field("out_y").type == pa.float64()
    ids = table.column("request_id").to_pylist()
    assert ids[3] == "given" and ids[1] == ids[2] != ids[0]
    assert len(ids[0]) == 36  # a generated UUID
    assert table.column("row").to_pylist() == [0, 0, 1, 0]
    assert table.column("arm").to_pylist() == ["champion"] * 4


@pytest.mark.parametrize("count", [0, 1, 15, 16, 1000])
def test_generated_ids_are_distinct_version_4_uuids(count: int) -> None:
    ids = uuid4_strings(count)
    assert len(ids) == len(set(ids)) == count
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_requests_without_ids_get_distinct_uuids_in_bulk(tmp_path: Path) -> None:
    x = np.zeros((300, 2), np.float32)
    ids = [""] * 299 + ["given"]
    with open_prediction_log(_settings(tmp_path, durability="sync")) as writer:
        writer.append(PredictionBatch("m", "1", ids, [1] * 300, {"x": x}, {"y": x})).result(10)
    logged = read_logs(tmp_path / "log").column("request_id").to_pylist()
    assert logged[-1] == "given"
    assert len(set(logged[:-1])) == 299
    assert all(uuid.UUID(i).version == 4 for i in logged[:-1])


def test_join_labels(tmp_path: Path) -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    with open_prediction_log(_settings(tmp_path)) as writer:
        writer.append(PredictionBatch("m", "1", ["a", "b"], [3, 2], {"x": x}, {"p": x[:, 0]}))
    table = read_logs(tmp_path / "log")
    labels = pa.table(
        {"request_id": ["b", "a", "zzz"], "row": pa.array([1, 2, 0], pa.int64()), "y": [1, 0, 1]}
    )
    joined = join_labels(table, labels)
    got = {(r["request_id"], r["row"]): r["y"] for r in joined.to_pylist()}
    assert got == {("a", 0): None, ("a", 1): None, ("a", 2): 0, ("b", 0): None, ("b", 1): 1}
    assert joined.column("x_1").to_pylist() == table.column("x_1").to_pylist()
    per_request = join_labels(table, pa.table({"request_id": ["a"], "outcome": ["churned"]}))
    assert per_request.column("outcome").to_pylist() == ["churned"] * 3 + [None] * 2
    with pytest.raises(ValueError, match="request_id"):
        join_labels(table, pa.table({"row": [0]}))
    # A label sent again, and one corrected later: each record once, with its last label.
    repeated = pa.table(
        {"request_id": ["a", "b", "a", "a"], "row": pa.array([2, 1, 2, 0], pa.int64()),
         "y": [1, 1, 0, 1]}
    )  # fmt: skip
    once = join_labels(table, repeated)
    assert once.num_rows == table.num_rows
    got = {(r["request_id"], r["row"]): r["y"] for r in once.to_pylist()}
    assert got == {("a", 0): 1, ("a", 1): None, ("a", 2): 0, ("b", 0): None, ("b", 1): 1}


def test_duckdb_queries_table_and_compacted_parquet(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    batches = _random_batches(rng, 12)
    with open_prediction_log(_settings(tmp_path)) as writer:
        for b in batches:
            writer.append(b)
    logs = read_logs(tmp_path / "log")
    expected = {}
    for row in logs.group_by("arm").aggregate([("latency_s", "count")]).to_pylist():
        expected[row["arm"]] = row["latency_s_count"]

    # DuckDB reads the pyarrow table (or a RecordBatchReader) directly, finding it by name.
    by_arm = dict(duckdb.sql("SELECT arm, count(*) FROM logs GROUP BY arm").fetchall())
    assert by_arm == expected
    reader = pa.RecordBatchReader.from_batches(logs.schema, logs.to_batches())  # noqa: F841
    assert duckdb.sql("SELECT count(*) FROM reader").fetchall() == [(logs.num_rows,)]

    out = tmp_path / "parquet"
    result = compact(tmp_path / "log", f"file://{out}")
    assert result.rows == logs.num_rows
    assert {Path(p).parents[2].name.split("=")[0] for p in result.files} == {"date"}
    glob = f"{out}/**/*.parquet"
    query = (
        f"SELECT model_version, arm, count(*), sum(age) FROM read_parquet('{glob}', "
        "hive_partitioning = true, hive_types = {'model_version': VARCHAR}) GROUP BY ALL"
    )
    from_parquet = {(v, a): (n, s) for v, a, n, s in duckdb.sql(query).fetchall()}
    from_arrow = {
        (r["model_version"], r["arm"]): (r["age_count"], r["age_sum"])
        for r in logs.group_by(["model_version", "arm"])
        .aggregate([("age", "count"), ("age", "sum")])
        .to_pylist()
    }
    assert from_parquet.keys() == from_arrow.keys()
    for key, (n, s) in from_arrow.items():
        assert from_parquet[key][0] == n
        assert from_parquet[key][1] == pytest.approx(s, rel=1e-6)

    # Compacting again rewrites the partitions rather than duplicating records.
    compact(tmp_path / "log", str(out))
    assert ds.dataset(out, format="parquet", partitioning="hive").count_rows() == logs.num_rows


def test_sampling_is_by_request_and_deterministic(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(3000)]
    counts = np.array([1 + i % 3 for i in range(3000)])
    x = np.arange(int(counts.sum()), dtype=np.float32).reshape(-1, 1)

    def logged(rate: float, name: str, chunks: int) -> pa.Table:
        settings = PredictionLogSettings(dir=tmp_path / name, sample_rate=rate)
        with open_prediction_log(settings) as writer:
            start_req, start_row = 0, 0
            for part in np.array_split(np.arange(len(ids)), chunks):
                n_rows = int(counts[part].sum())
                writer.append(
                    PredictionBatch(
                        "m",
                        "1",
                        ids[start_req : start_req + len(part)],
                        counts[part],
                        {"x": x[start_row : start_row + n_rows]},
                    )
                )
                start_req += len(part)
                start_row += n_rows
            writer.append_rejected(RejectedRequest("rejected-1", 8, "QUEUE_FULL"))
        return read_logs(tmp_path / name)

    quarter = logged(0.25, "a", 7)
    kept = set(quarter.column("request_id").to_pylist()) - {"rejected-1"}
    assert 0.2 * len(ids) < len(kept) < 0.3 * len(ids)
    assert "rejected-1" in set(quarter.column("request_id").to_pylist())
    # every row of a kept request is there, with its own features
    rows_by_id: dict[str, list[int]] = {}
    for rid, row in zip(quarter["request_id"].to_pylist(), quarter["row"].to_pylist(), strict=True):
        rows_by_id.setdefault(rid, []).append(row)
    for rid in kept:
        assert sorted(rows_by_id[rid]) == list(range(counts[int(rid[1:])]))
    again = logged(0.25, "b", 3)
    assert set(again.column("request_id").to_pylist()) - {"rejected-1"} == kept
    tenth = set(logged(0.1, "c", 5).column("request_id").to_pylist()) - {"rejected-1"}
    assert tenth < kept
    assert logged(0.0, "d", 2).column("request_id").to_pylist() == ["rejected-1"]


def test_excluded_features_never_reach_disk(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    photo = np.ones((4, 3, 3), np.uint8)
    settings = _settings(tmp_path, exclude_features="income, zip,photo")
    with open_prediction_log(settings) as writer:
        writer.append(
            PredictionBatch(
                "m",
                "1",
                ["a", "b"],
                [1, 3],
                {"features": x, "photo": photo},
                {"p": x[:, :2]},
                feature_names=FEATURES,
            )
        )
    table = read_logs(tmp_path / "log")
    assert "income" not in table.column_names and "zip" not in table.column_names
    assert "photo" not in table.column_names
    kept = [n for n in FEATURES if n not in ("income", "zip")]
    assert [[r[n] for n in kept] for r in table.to_pylist()] == x[:, [0, 3, 4, 5]].tolist()
    for path in list_log_files(tmp_path / "log"):
        raw = path.read_bytes()
        assert b"income" not in raw and b"zip" not in raw and b"photo" not in raw


def test_schema_change_starts_a_new_file_and_reader_unifies(tmp_path: Path) -> None:
    with open_prediction_log(_settings(tmp_path, durability="sync")) as writer:
        writer.append(
            PredictionBatch("m", "1", ["a"], [2], {"x": np.ones((2, 2), np.float32)})
        ).result(10)
        writer.append_rejected(RejectedRequest("r", "INVALID_ARGUMENT", "BAD")).result(10)
        writer.append(
            PredictionBatch("m", "2", ["b"], [1], {"x": np.full((1, 3), 2, np.float32)})
        ).result(10)
    files = list_log_files(tmp_path / "log")
    assert len(files) == 2  # the rejected record fits the first file's columns
    table = read_logs(tmp_path / "log")
    assert table.column("x_2").to_pylist() == [None, None, None, 2.0]
    assert read_logs(tmp_path / "log", model_version="2").column("request_id").to_pylist() == ["b"]
