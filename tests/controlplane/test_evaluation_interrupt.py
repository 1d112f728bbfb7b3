"""Stopping an evaluation after its model run, while it computes slice and fairness metrics: a
stop (a cancel, the time limit, a server stop) ends it at the next slice or group, in process
and through a real control plane. The metrics of each slice are counted by wrapping the
engine's metric function, so the tests assert on how many slices were computed after the
stop, not on how long anything took."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controlplane.evaluation import RunControl, _engine, evaluate
from modelplane import Client
from modelplane.testing.onnx_models import mlp
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane

FEATURES = ["x0", "x1"]
ROWS = 5_000
SLICE_COLUMNS = 400
SLICE_VALUES = 50
ALL_SLICES = SLICE_COLUMNS * SLICE_VALUES


class Stop(Exception):
    """The reason given to RunControl.stop in process."""


@dataclass
class SliceCounter:
    """Counts the slice metrics the engine computes; ``started`` is set at the ``start_at``-th
    and ``on_start`` runs then (in the evaluation's thread)."""

    start_at: int = 100
    on_start: Callable[[], None] | None = None
    pause: float = 0.0
    calls: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            if str(args[-1]).startswith("slice:"):
                with self.lock:
                    self.calls += 1
                    reached = self.calls == self.start_at
                if reached:
                    if self.on_start is not None:
                        self.on_start()
                    self.started.set()
                if self.pause:
                    time.sleep(self.pause)
            return real(*args)

        return counted

    @property
    def count(self) -> int:
        with self.lock:
            return self.calls


def _table(rows: int = ROWS, slice_columns: int = SLICE_COLUMNS) -> pa.Table:
    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {n: rng.standard_normal(rows).astype(np.float32) for n in FEATURES}
    columns["y"] = rng.integers(0, 2, rows)
    for j in range(slice_columns):
        columns[f"s{j}"] = rng.integers(0, SLICE_VALUES, rows).astype(np.int8)
    columns["g0"] = rng.integers(0, 3, rows).astype(np.int8)
    columns["g1"] = rng.integers(0, 3, rows).astype(np.int8)
    return pa.table(columns)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return mlp(len(FEATURES), (4,), 2).SerializeToString()


@pytest.fixture(scope="module")
def data() -> pa.Table:
    return _table()


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[SliceCounter]:
    counted = SliceCounter()
    for name in ("classification_metrics", "regression_metrics"):
        monkeypatch.setattr(_engine, name, counted.wrap(getattr(_engine, name)))
    yield counted


def _slices(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if n.startswith("s")]


# In process --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_stop_during_slice_metrics_ends_the_evaluation_at_the_next_slice(
    model_bytes: bytes, data: pa.Table, counter: SliceCounter, task: str
) -> None:
    control = RunControl()
    counter.on_start = lambda: control.stop(Stop())
    model = model_bytes
    if task == "regression":
        model = mlp(len(FEATURES), (4,), 1, softmax=False).SerializeToString()
    with pytest.raises(Stop):
        evaluate(
            model,
            None,
            data,
            label="y",
            feature_names=FEATURES,
            slices=_slices(data),
            task=task,
            control=control,
        )
    # The slice whose metrics were under way when the stop came is the last one computed.
    assert counter.count == counter.start_at


def test_a_stop_during_fairness_metrics_ends_the_evaluation_at_the_next_group(
    model_bytes: bytes, data: pa.Table, counter: SliceCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = RunControl()
    attributes: list[str] = []
    real = _engine.fairness_report

    def stopped_at_first_attribute(name: str, *args: Any) -> Any:
        attributes.append(name)
        control.stop(Stop())
        return real(name, *args)

    monkeypatch.setattr(_engine, "fairness_report", stopped_at_first_attribute)
    with pytest.raises(Stop):
        evaluate(
            model_bytes,
            None,
            data,
            label="y",
            feature_names=FEATURES,
            protected=["g0", "g1"],
            slices=_slices(data),
            control=control,
        )
    assert attributes == ["g0"] and counter.count == 0


# Through a control plane -------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes, data: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("interrupt")
    (folder / "m.onnx").write_bytes(model_bytes)
    pq.write_table(data, folder / "big.parquet")
    pq.write_table(data.select([*FEATURES, "y"]).slice(0, 100), folder / "tiny.parquet")
    return folder


def _register(c: Client, files: Path) -> str:
    model_id = unique()
    c.create_model(model_id)
    c.register_version(model_id, files / "m.onnx", feature_names=FEATURES)
    return model_id


def _wait_done(c: Client, name: str):
    for _ in range(40):
        op = c.wait_operation(name, timeout=30)
        if op.done:
            return op
    raise AssertionError(f"operation {name} did not finish")


def test_cancel_while_slices_are_computed_frees_the_worker_at_once(
    tmp_path: Path, files: Path, data: pa.Table, counter: SliceCounter
) -> None:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", evaluation_workers=1)
    try:
        with cp.client() as c:
            model_id = _register(c, files)
            big = c.evaluate(
                model_id, 1, files / "big.parquet", label="y", slices=_slices(data), compare_to="-"
            )
            assert counter.started.wait(120), "the slice metrics did not start"
            cancelled = c.cancel_operation(big.name)
            at_cancel = counter.count
            # One worker: this evaluation runs only once the cancelled one has let it go.
            tiny = c.evaluate(model_id, 1, files / "tiny.parquet", label="y", compare_to="-")
            done = _wait_done(c, tiny.name)
            after = counter.count
            stored = [e.operation for e in c.list_evaluations(model_id, 1)]
    finally:
        cp.handle.stop(0)
    assert cancelled.error.reason == "CANCELLED"
    assert done.HasField("result") and stored == [tiny.name]
    # At most the slice under way at the cancel finished; the other thousands never started.
    assert after - at_cancel <= 1 and after < ALL_SLICES


def test_the_time_limit_ends_an_evaluation_while_slices_are_computed(
    tmp_path: Path, files: Path, data: pa.Table, counter: SliceCounter
) -> None:
    # Slowed down to well over a minute of slice metrics, against a limit of 2 s.
    counter.pause = 0.005
    cp = start_controlplane(
        tmp_path,
        f"sqlite:///{tmp_path / 'cp.db'}",
        evaluation_workers=1,
        evaluation_timeout_seconds=2.0,
    )
    try:
        with cp.client() as c:
            model_id = _register(c, files)
            op = c.evaluate(
                model_id, 1, files / "big.parquet", label="y", slices=_slices(data), compare_to="-"
            )
            ended = _wait_done(c, op.name)
            tiny = _wait_done(c, c.evaluate(model_id, 1, files / "tiny.parquet", label="y").name)
            at_end = counter.count
    finally:
        cp.handle.stop(0)
    assert ended.error.code == "DEADLINE_EXCEEDED"
    assert ended.error.reason == "EVALUATION_TIMEOUT"
    assert tiny.HasField("result")
    assert at_end < ALL_SLICES / 2


def test_stopping_the_server_ends_slice_metrics_in_progress(
    tmp_path: Path, files: Path, data: pa.Table, counter: SliceCounter
) -> None:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", evaluation_workers=1)
    with cp.client() as c:
        model_id = _register(c, files)
        op = c.evaluate(
            model_id, 1, files / "big.parquet", label="y", slices=_slices(data), compare_to="-"
        )
        assert counter.started.wait(120), "the slice metrics did not start"
    stopper = threading.Thread(target=cp.handle.stop, args=(0,), daemon=True)
    stopper.start()
    stopper.join(300)
    assert not stopper.is_alive(), "the server stop waited on the slice metrics"
    # The stop waits for its workers: every slice computed was computed before it returned.
    assert counter.count < ALL_SLICES / 2 and op.name
