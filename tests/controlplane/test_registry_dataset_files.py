"""Datasets as users write them, registered on a real control plane: a wide train dataset
within the client's default deadline, a CSV of multi-line text cells larger than the CSV
reader's block, CSV and Parquet copies of one DataFrame giving one baseline, and a Parquet file
that repeats a column name refused as any other format is."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def _model(c: Client, tmp_path: Path, features: int) -> tuple[str, Path]:
    model = unique()
    c.create_model(model)
    return model, save(mlp(features, (2,)), tmp_path / f"m{features}.onnx")


def test_a_wide_train_dataset_registers_within_the_default_deadline(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """10,000 columns: the missing-column check and the profile once took time quadratic in
    the column count (over two minutes), past the client's default 60 s deadline."""
    width = 10_000
    rng = np.random.default_rng(0)
    names = [f"feature_{i:05d}" for i in range(width)]
    pq.write_table(pa.table({n: rng.normal(size=20) for n in names}), tmp_path / "wide.parquet")
    with Client(controlplane.address, principal="alice") as c:  # the default timeout
        model, onnx = _model(c, tmp_path, width)
        v = c.register_version(
            model, onnx, datasets={"train": tmp_path / "wide.parquet"}, capture_env=False
        )
    assert list(v.feature_names) == names
    assert v.baseline.feature_count == width and v.baseline.row_count == 20
    assert len(v.lineage.datasets[0].schema) == width


def test_a_csv_with_multi_line_cells_larger_than_a_block_registers(
    client: Client, tmp_path: Path
) -> None:
    """Block boundaries fall inside quoted cells holding line breaks (free text as pandas
    writes it): the size check and the reader once refused such a file as out of sync."""
    rows = 10_000
    notes = [f"line one {i}\n" + "w" * 200 for i in range(rows)]
    frame = pd.DataFrame({"x": np.arange(rows, dtype=np.float64), "note": notes})
    frame.to_csv(tmp_path / "train.csv", index=False)
    assert (tmp_path / "train.csv").stat().st_size > 2 * 2**20
    model, onnx = _model(client, tmp_path, 2)
    v = client.register_version(
        model,
        onnx,
        datasets={"train": tmp_path / "train.csv", "holdout": tmp_path / "train.csv"},
        capture_env=False,
    )
    assert [d.row_count for d in v.lineage.datasets] == [rows, rows]
    assert v.baseline.row_count == rows


def test_csv_and_parquet_copies_of_one_frame_give_one_baseline(
    client: Client, tmp_path: Path
) -> None:
    """An empty CSV cell is missing in a text column as in a number column, as the Parquet
    copy's None is; an empty text is missing in both."""
    frame = pd.DataFrame(
        {
            "city": ["Paris", None, "Oslo", None, "", "Paris"] * 10,
            "x": [1.0, None, 3.0, 4.0, 5.0, 6.0] * 10,
        }
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_parquet(tmp_path / "train.parquet", index=False)
    model, onnx = _model(client, tmp_path, 2)
    made = [
        client.register_version(model, onnx, datasets={"train": path}, capture_env=False)
        for path in (tmp_path / "train.csv", tmp_path / "train.parquet")
    ]
    assert made[0].baseline.sha256 == made[1].baseline.sha256


def test_a_parquet_file_repeating_a_column_name_is_duplicate_columns(
    client: Client, tmp_path: Path
) -> None:
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["a", "a"])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    (tmp_path / "dup.parquet").write_bytes(sink.getvalue())
    model, onnx = _model(client, tmp_path, 2)
    for role in ("train", "holdout"):
        with pytest.raises(InvalidArgument) as info:
            client.register_version(
                model, onnx, datasets={role: tmp_path / "dup.parquet"}, capture_env=False
            )
        assert info.value.reason == "DUPLICATE_COLUMNS"
        assert "'a'" in info.value.message and "\n" not in info.value.message
