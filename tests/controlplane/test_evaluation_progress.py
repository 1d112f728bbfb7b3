"""Progress of an evaluation: the model runs over about a tenth of the dataset at a time, so that
progress moves in steps on datasets of any size (one under the largest run of 65,536 rows
included), and the metrics after the model run report theirs too; through a control plane the
operation's progress enters each 10 % step while the model runs."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controlplane.evaluation import evaluate
from controlplane.evaluation._engine import chunk_rows_for
from modelplane.testing.onnx_models import mlp
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane

FEATURES = ["x0", "x1", "x2"]


def _table(rows: int) -> pa.Table:
    rng = np.random.default_rng(1)
    columns: dict[str, Any] = {n: rng.standard_normal(rows).astype(np.float32) for n in FEATURES}
    columns["y"] = rng.integers(0, 2, rows)
    columns["region"] = rng.choice(["n", "s", "e"], rows)
    columns["plan"] = rng.integers(0, 4, rows)
    columns["sex"] = rng.choice(["f", "m"], rows)
    return pa.table(columns)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return mlp(len(FEATURES), (8,), 2).SerializeToString()


def test_runs_are_a_tenth_of_the_dataset_within_bounds() -> None:
    assert chunk_rows_for(1) == 1_024 and chunk_rows_for(10_240) == 1_024
    assert chunk_rows_for(20_000) == 2_000 and chunk_rows_for(40_001) == 4_001
    assert chunk_rows_for(655_360) == 65_536 and chunk_rows_for(10_000_000) == 65_536


def test_progress_moves_during_the_model_run_of_a_small_dataset(model_bytes: bytes) -> None:
    seen: list[float] = []
    evaluate(
        model_bytes, None, _table(20_000), label="y", feature_names=FEATURES, progress=seen.append
    )
    during = [f for f in seen if 0.0 < f <= 0.9]
    # Ten model runs of 2,000 rows: progress after each, 0.09 apart.
    assert during == pytest.approx([0.09 * k for k in range(1, 11)])
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_progress_moves_while_metrics_are_computed(model_bytes: bytes) -> None:
    seen: list[float] = []
    evaluate(
        model_bytes,
        None,
        _table(3_000),
        label="y",
        feature_names=FEATURES,
        slices=["region", "plan"],
        protected=["sex"],
        progress=seen.append,
    )
    # One step each for the overall metrics, the protected attribute and the two slice
    # columns; the last is the 1.0 at the end.
    after_model = [f for f in seen if 0.9 < f < 1.0]
    assert after_model == pytest.approx([0.925, 0.95, 0.975])
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_the_operation_reports_each_step_of_the_model_run(
    tmp_path: Path, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model run waits for the test, which reads the operation's progress before letting
    it go: what a caller polling the operation sees between runs."""
    arrived: queue.Queue[None] = queue.Queue()
    go = threading.Semaphore(0)
    real = ort.InferenceSession.run

    def paced(self: ort.InferenceSession, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("eval"):
            arrived.put(None)
            assert go.acquire(timeout=60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", paced)
    (tmp_path / "m.onnx").write_bytes(model_bytes)
    pq.write_table(_table(20_000), tmp_path / "d.parquet")
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", evaluation_workers=1)
    seen: list[float] = []
    try:
        with cp.client() as c:
            model_id = unique()
            c.create_model(model_id)
            c.register_version(model_id, tmp_path / "m.onnx", feature_names=FEATURES)
            op = c.evaluate(model_id, 1, tmp_path / "d.parquet", label="y", compare_to="-")
            for _ in range(10):
                arrived.get(timeout=60)
                seen.append(c.get_operation(op.name).progress)
                go.release()
            result = c.operation_result(op, timeout=60)
            final = c.get_operation(op.name)
    finally:
        go.release(100)
        cp.handle.stop(0)
    assert result.rows == 20_000
    # After run k (0.09 k of the work) the operation shows it once it enters a new 10 % step:
    # nothing moves after the first run only (0.09), then every run is seen.
    assert seen == pytest.approx([0.0, 0.0] + [0.09 * k for k in range(2, 10)])
    assert final.progress == 1.0
