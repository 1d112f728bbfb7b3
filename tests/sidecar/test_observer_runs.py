"""Records gathered into runs: what the hub hands to bulk observers, and that the log and the
drift windows come out the same as from the records one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from modelplane.profiles import build_profile
from sidecar.drift import DriftMonitor
from sidecar.driftfeed import DriftFeed, FeatureSource
from sidecar.observers import BatchRecord, ObserverHub, RecordRun, RejectedRecord, gather
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    open_prediction_log,
    read_logs,
)
from sidecar.recording import LogFeed
from sidecar.signature import DTYPES, Signature, TensorSpec

FIXED = object()


def _record(
    rows: list[int],
    *,
    width: int = 3,
    seed: int = 0,
    status: list[str] | None = None,
    codes: list[str] | None = None,
    layout: object | None = None,
    finished_at: float = 1_000.0,
    prefix: str = "r",
) -> BatchRecord:
    rng = np.random.default_rng(seed)
    total = sum(rows)
    x = rng.normal(size=(total, width)).astype(np.float32)
    return BatchRecord(
        model="m",
        version="1",
        provider="CPUExecutionProvider",
        inputs={"x": x},
        outputs={"y": x.sum(axis=1, keepdims=True), "label": (x[:, 0] > 0).astype(np.int64)},
        request_ids=[f"{prefix}{seed}-{i}" for i in range(len(rows))],
        trace_ids=[f"t{seed}" if i % 2 else "" for i in range(len(rows))],
        row_counts=rows,
        latencies_s=[0.001 * (i + 1) for i in range(len(rows))],
        status=status or ["OK"] * len(rows),
        compute_s=0.0005,
        finished_at=finished_at,
        codes=codes,
        layout=layout,
    )


def _rejected(seed: int) -> RejectedRecord:
    return RejectedRecord("m", "1", f"bad{seed}", "", "INVALID_ARGUMENT", "WRONG_SHAPE", "no", 5.0)


def _mixed() -> list[BatchRecord | RejectedRecord]:
    return [
        _record([1], seed=1),
        _record([2, 1], seed=2, status=["OK", "MODEL_EXECUTION_FAILED"]),
        _rejected(3),
        _record([1], seed=4, finished_at=1_001.0),
        _record([1], seed=5, width=4),
        _record([3], seed=6, layout=FIXED),
        _record([1, 1], seed=7, layout=FIXED, codes=["OK", "OK"]),
    ]


def test_gather_keeps_order_and_splits_where_layouts_differ() -> None:
    records = _mixed()
    parts = gather(records)
    kinds = [type(p).__name__ for p in parts]
    assert kinds == ["RecordRun", "RejectedRecord", "RecordRun", "RecordRun", "RecordRun"]
    first, rejected, third, other_width, fixed = parts
    assert isinstance(first, RecordRun) and isinstance(fixed, RecordRun)
    assert rejected is records[2]
    np.testing.assert_array_equal(
        first.inputs["x"], np.concatenate([records[0].inputs["x"], records[1].inputs["x"]])
    )
    assert first.outputs["label"].dtype == np.int64 and first.outputs["label"].shape == (4,)
    assert first.request_ids == ["r1-0", "r2-0", "r2-1"]
    assert first.row_counts == [1, 2, 1]
    assert first.call_rows == [1, 3, 3]
    assert first.finished_at == [1_000.0] * 3
    assert first.failed == 1
    # Without codes a failed request is INTERNAL, as the log has always named it.
    assert first.codes == ["OK", "OK", "INTERNAL"]
    mask = first.ok_rows()
    assert mask is not None and mask.tolist() == [True, True, True, False]
    np.testing.assert_allclose(first.arrived(), [1_000.0 - 0.001, 1_000.0 - 0.001, 1_000.0 - 0.002])
    assert isinstance(third, RecordRun) and third.request_ids == ["r4-0"]
    assert third.ok_rows() is None
    assert isinstance(other_width, RecordRun) and other_width.inputs["x"].shape == (1, 4)
    # A publisher's layout key joins its records without comparing their tensors.
    assert fixed.request_ids == ["r6-0", "r7-0", "r7-1"]
    assert fixed.call_rows == [3, 2, 2]
    assert fixed.inputs["x"].shape == (5, 3)


def test_gather_of_nothing_and_of_rejections_only() -> None:
    assert gather([]) == []
    rejected = [_rejected(1), _rejected(2)]
    assert gather(rejected) == rejected


def _reference_log(directory: Path, records: list[BatchRecord | RejectedRecord]) -> Any:
    """The log written straight from each record's fields, one append per record."""
    with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
        for r in records:
            if isinstance(r, RejectedRecord):
                writer.append_rejected(
                    RejectedRequest(
                        r.request_id,
                        r.code,
                        r.reason,
                        r.message,
                        r.model,
                        r.version,
                        timestamp=r.at,
                        feature_names=["a", "b", "c"],
                    )
                )
                continue
            ok = [s == "OK" for s in r.status]
            writer.append(
                PredictionBatch(
                    r.model,
                    r.version,
                    r.request_ids,
                    r.row_counts,
                    r.inputs,
                    r.outputs,
                    latencies_s=r.latencies_s,
                    trace_ids=[t or None for t in r.trace_ids],
                    timestamps=[r.finished_at - lat for lat in r.latencies_s],
                    batch_size=sum(r.row_counts),
                    status_codes=r.codes or ["OK" if k else "INTERNAL" for k in ok],
                    status_reasons=[None if k else s for k, s in zip(ok, r.status, strict=True)],
                    feature_names=["a", "b", "c"],
                )
            )
    return read_logs(directory).sort_by([("request_id", "ascending"), ("row", "ascending")])


def test_the_log_from_runs_equals_one_append_per_record(tmp_path: Path) -> None:
    records = [r for r in _mixed() if isinstance(r, RejectedRecord) or r.inputs["x"].shape[1] == 3]
    with open_prediction_log(PredictionLogSettings(dir=tmp_path / "runs")) as writer:
        LogFeed(writer, ["a", "b", "c"]).on_runs(gather(records))
    by_runs = read_logs(tmp_path / "runs").sort_by(
        [("request_id", "ascending"), ("row", "ascending")]
    )
    expected = _reference_log(tmp_path / "reference", records)
    assert by_runs.num_rows == 11
    assert by_runs.to_pylist() == expected.to_pylist()
    rows = by_runs.to_pylist()
    # Each request keeps the size of the session call it ran in.
    sizes = {(r["request_id"], r["row"]): r["batch_size"] for r in rows}
    assert sizes[("r2-1", 0)] == 3 and sizes[("r1-0", 0)] == 1 and sizes[("r7-0", 0)] == 2
    failed = [r for r in rows if r["request_id"] == "r2-1"]
    assert failed[0]["status_code"] == "INTERNAL"
    assert failed[0]["status_reason"] == "MODEL_EXECUTION_FAILED"


def _drift_feed() -> DriftFeed:
    rng = np.random.default_rng(0)
    table = pa.table({name: rng.normal(size=5_000) for name in ("a", "b", "c")})
    profile = build_profile(table, [], sample_size=500)
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 3), DTYPES["FP32"]),),
        outputs=(TensorSpec("y", "FP32", (-1, 1), DTYPES["FP32"]),),
    )
    monitor = DriftMonitor(profile, window_rows=1_000_000)
    return DriftFeed(
        monitor, FeatureSource.plan(signature, profile, ["a", "b", "c"], ["a", "b", "c"])
    )


def test_drift_from_runs_counts_the_successful_rows_like_a_direct_update() -> None:
    records = [_record([2, 3], seed=s, status=["OK", "MODEL_EXECUTION_FAILED"]) for s in range(5)]
    records += [_record([4], seed=10 + s, layout=FIXED) for s in range(5)]
    feed, reference = _drift_feed(), _drift_feed()
    feed.on_runs(gather(records))
    ok_rows = [r.inputs["x"][:2] for r in records[:5]] + [r.inputs["x"] for r in records[5:]]
    reference.monitor.update(np.concatenate(ok_rows).astype(np.float64))
    expected, got = reference.current()[0], feed.current()[0]
    # The failed requests' rows are left out: 5 x 2 + 5 x 4 rows count.
    assert got.rows == expected.rows == 30
    np.testing.assert_array_equal(got.cells, expected.cells)
    np.testing.assert_array_equal(got.missing, expected.missing)


class _Recorder:
    def __init__(self) -> None:
        self.runs: list[object] = []

    def on_runs(self, runs: list[object]) -> None:
        self.runs.append(runs)


class _Lister:
    def __init__(self) -> None:
        self.lists: list[object] = []

    def on_records(self, records: list[object]) -> None:
        self.lists.append(records)


def test_hub_gathers_once_for_every_observer_that_takes_runs() -> None:
    first, second, lister = _Recorder(), _Recorder(), _Lister()
    hub = ObserverHub([first, second, lister], linger=0.0)
    hub.start()
    records = _mixed()
    for record in records:
        hub.publish(record)
    hub.close()
    delivered = [r for batch in lister.lists for r in batch]  # type: ignore[attr-defined]
    assert delivered == records
    assert first.runs and len(first.runs) == len(second.runs)
    for a, b in zip(first.runs, second.runs, strict=True):
        assert a is b


@pytest.mark.parametrize("bad", [[1, 2], np.array([1.5])])
def test_a_per_request_batch_size_of_the_wrong_length_is_refused(
    tmp_path: Path, bad: object
) -> None:
    run = gather([_record([1, 1, 1], seed=1)])[0]
    assert isinstance(run, RecordRun)
    from sidecar.recording import run_to_prediction_batch

    batch = run_to_prediction_batch(run, None)
    batch.batch_size = bad  # type: ignore[assignment]
    with open_prediction_log(PredictionLogSettings(dir=tmp_path)) as writer:
        with pytest.raises(ValueError, match="batch_size has"):
            writer.append(batch)
        assert writer.healthy
