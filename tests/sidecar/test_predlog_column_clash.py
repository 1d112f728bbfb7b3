"""Prediction-log columns that clash (a feature named ``row``, ``timestamp`` or like an
output's column): refused at start-up; a batch that still cannot be logged fails its own
requests (``sync``) or is counted as a log error (``async``), and never stalls the batcher or
the feed. Real sidecars on loopback, real ONNX models, the log read back with pyarrow."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from sidecar_helpers import raw_request, stub

from modelplane.errors import FailedPrecondition, Internal
from sidecar.batcher import Batcher, Item
from sidecar.codec import Decoded
from sidecar.observers import BatchRecord, RejectedRecord
from sidecar.predlog import PredictionLogSettings, open_prediction_log, read_logs
from sidecar.recording import LogFeed


def _log(tmp_path: Path, durability: Any) -> PredictionLogSettings:
    return PredictionLogSettings(dir=tmp_path / "log", durability=durability, flush_interval=0.05)


@pytest.mark.parametrize(
    ("durability", "mode", "names"),
    [
        ("sync", "thread", ("a", "row", "c")),
        ("async", "thread", ("a", "timestamp", "c")),
        ("async", "process", ("out_y", "b", "c")),
    ],
)
def test_a_feature_named_like_a_log_column_is_refused_at_start(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: str, mode: str, names: Any
) -> None:
    with pytest.raises(FailedPrecondition) as err:
        sidecar_factory(
            model_dir / "id_fp32.onnx",
            log_settings=_log(tmp_path, durability),
            feature_names=names,
            observer_mode=mode,
        )
    assert err.value.reason == "LOG_COLUMN_CLASH"
    clash = next(n for n in names if n not in ("a", "b", "c"))
    assert repr(clash) in err.value.message
    assert "--feature-names" in err.value.message


def test_the_clash_check_leaves_fine_names_alone(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx",
        log_settings=_log(tmp_path, "sync"),
        feature_names=("a", "b", "c"),
    )
    x = np.ones((1, 3), np.float32)
    stub(handle.port).ModelInfer(raw_request("id_fp32", {"x": ("FP32", x)}, id="r"), timeout=10)
    assert read_logs(tmp_path / "log").column_names[-4:] == ["a", "b", "c", "out_y"]


def test_a_sync_batch_the_log_cannot_take_fails_its_requests_and_the_next_ones_run(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx",
        log_settings=_log(tmp_path, "sync"),
        max_batch_size=8,
        max_queue_delay=0.02,
    )
    sync_log = handle.slot.current.sync_log
    # Names that clash, as a version's feature names could, past the start-up check.
    sync_log.feature_names = ["a", "row", "c"]
    x = np.ones((1, 3), np.float32)
    codes: dict[str, Any] = {}

    def call(rid: str) -> None:
        try:
            stub(handle.port).ModelInfer(
                raw_request("id_fp32", {"x": ("FP32", x)}, id=rid), timeout=10
            )
            codes[rid] = (grpc.StatusCode.OK, "")
        except grpc.RpcError as exc:
            codes[rid] = (exc.code(), exc.details())

    threads = [threading.Thread(target=call, args=(f"bad{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {c[0] for c in codes.values()} == {grpc.StatusCode.INTERNAL}, codes
    assert all("prediction log" in c[1] for c in codes.values())
    sync_log.feature_names = None
    call("good")
    assert codes["good"][0] == grpc.StatusCode.OK
    table = read_logs(tmp_path / "log")
    assert table.filter(pa.compute.equal(table["request_id"], "good")).num_rows == 1


def test_the_batcher_hands_the_lead_on_when_a_batch_raises() -> None:
    calls: list[int] = []

    def execute(batch: list[Item]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=8, max_delay=0.05, max_queue_rows=64)

    def decoded() -> Decoded:
        return Decoded(arrays={}, outputs=(), rows=1, key=("k",), request_id="r")

    items = [Item(decoded(), time.monotonic() + 10, None) for _ in range(4)]
    threads = [threading.Thread(target=batcher.submit, args=(it,)) for it in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert calls[0] >= 1
    failed = [it for it in items if it.error is not None]
    assert len(failed) == calls[0]
    assert all(isinstance(it.error, Internal) for it in failed)
    assert all(it.result == "ok" for it in items if it.error is None)
    later = Item(decoded(), time.monotonic() + 10, None)
    runner = threading.Thread(target=batcher.submit, args=(later,))
    runner.start()
    runner.join(15)
    assert later.result == "ok"


def _record(request_id: str, x: np.ndarray) -> BatchRecord:
    return BatchRecord(
        model="m",
        version="1",
        provider="CPUExecutionProvider",
        inputs={"x": x},
        outputs={"y": x},
        request_ids=[request_id],
        trace_ids=[""],
        row_counts=[len(x)],
        latencies_s=[0.001],
        status=["OK"],
        compute_s=0.001,
    )


def test_an_async_run_the_log_cannot_take_is_counted_and_the_rest_is_written(
    tmp_path: Path,
) -> None:
    writer = open_prediction_log(_log(tmp_path, "async"))
    feed = LogFeed(writer, ["a", "row", "c"])
    x = np.ones((2, 3), np.float32)
    rejected = RejectedRecord("m", "1", "refused", "", "INVALID_ARGUMENT", "BAD", "bad input")
    try:
        feed.on_records([_record("clash", x), rejected])
        feed.feature_names = None
        feed.on_records([_record("fine", x)])
    finally:
        writer.close()
    assert feed.refused == 1
    assert writer.metrics.registry.get_sample_value("modelplane_prediction_log_errors_total") == 1
    table = read_logs(tmp_path / "log")
    assert sorted(set(table["request_id"].to_pylist())) == ["fine", "refused"]
