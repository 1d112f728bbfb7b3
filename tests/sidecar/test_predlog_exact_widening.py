"""Schemas merge only where every value converts exactly: an int64 input beside a float64 or
uint64 one (two live versions) goes to its own file, instead of a checked cast failing on the
writer thread (which stopped the log for good) or values being rounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
    read_file_batches,
    read_logs,
)
from sidecar.predlog.schemas import unify


def _batch(version: str, x: np.ndarray, request_id: str) -> PredictionBatch:
    outputs = {"y": np.zeros((1, 1), np.float32)}
    return PredictionBatch("m", version, [request_id], [1], {"x": x}, outputs, latencies_s=0.001)


@pytest.mark.parametrize(
    ("other", "big"),
    [
        (np.array([[0.5, 1.5]]), np.array([[2**53 + 1, 7]], dtype=np.int64)),
        (np.array([[1, 2]], dtype=np.uint64), np.array([[-(2**62), 7]], dtype=np.int64)),
        (np.array([[2**63 + 1, 2]], dtype=np.uint64), np.array([[-1, 7]], dtype=np.int64)),
    ],
)
def test_values_that_do_not_convert_exactly_keep_the_log_running(
    tmp_path: Path, other: np.ndarray, big: np.ndarray
) -> None:
    failures: list[BaseException] = []
    settings = PredictionLogSettings(dir=tmp_path, flush_interval=0.01)
    with open_prediction_log(settings, on_failure=failures.append) as writer:
        writer.append(_batch("2", other, "a")).result(10)
        writer.append(_batch("1", big, "b")).result(10)
        writer.append(_batch("2", other, "c")).result(10)
        assert writer.healthy and not failures
    assert len(list_log_files(tmp_path)) == 2
    written = read_logs(tmp_path, model_version="1")
    assert written.column("x_0").to_pylist() == [int(big[0, 0])]
    assert sorted(read_logs(tmp_path, model_version="2").column("request_id").to_pylist()) == [
        "a",
        "c",
    ]
    for path in list_log_files(tmp_path):
        for batch in read_file_batches(path):
            assert batch.column("x_0").type == pa.from_numpy_dtype(
                (big if batch.column("model_version")[0].as_py() == "1" else other).dtype
            )


@pytest.mark.parametrize(
    ("narrow", "wide"),
    [
        (pa.float32(), pa.float64()),
        (pa.int32(), pa.float64()),
        (pa.int32(), pa.int64()),
        (pa.uint32(), pa.int64()),
        (pa.string(), pa.large_string()),
        (pa.list_(pa.float32(), 3), pa.list_(pa.float64())),
    ],
)
def test_exact_widenings_still_merge(narrow: pa.DataType, wide: pa.DataType) -> None:
    merged = unify([pa.schema([("x", narrow)]), pa.schema([("x", wide), ("z", pa.int8())])])
    assert merged is not None and merged.field("x").type == wide


@pytest.mark.parametrize(
    ("one", "two"),
    [
        (pa.int64(), pa.float64()),
        (pa.int64(), pa.float32()),
        (pa.int64(), pa.uint64()),
        (pa.list_(pa.int64()), pa.list_(pa.float64())),
        (pa.timestamp("s"), pa.timestamp("ns")),
    ],
)
def test_lossy_promotions_do_not_merge(one: pa.DataType, two: pa.DataType) -> None:
    assert unify([pa.schema([("x", one)]), pa.schema([("x", two)])]) is None
