"""Datasets as users write them, registered on a real control plane: a wide train dataset
within the client's default deadline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelplane import Client
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
