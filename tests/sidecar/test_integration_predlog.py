"""The prediction log through a real sidecar: round trip, kill -9 in both durabilities, and a
failing disk. Requests go over gRPC with the OIP stubs; the log is read back with pyarrow."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from sidecar_helpers import (
    FAILING_DISK,
    health_status,
    raw_request,
    rows_by_request,
    spawn_sidecar,
    stub,
)

from sidecar.predlog import PredictionLogSettings, list_log_files, read_file_batches, read_logs

NAMES = [f"f{i}" for i in range(32)]


def _serve_args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu", *extra]


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize(
    ("durability", "batch"), [("async", 1), ("sync", 1), ("async", 16), ("sync", 16)]
)
def test_every_request_and_rejection_is_logged_exactly(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: Any, batch: int
) -> None:
    model = model_dir / "mlp.onnx"
    handle = sidecar_factory(
        model,
        log_settings=PredictionLogSettings(
            dir=tmp_path, durability=durability, flush_interval=0.05
        ),
        feature_names=tuple(NAMES),
        max_batch_size=batch,
        max_queue_delay=0.002,
    )
    rng = np.random.default_rng(7)
    sent: dict[str, np.ndarray] = {}

    def client(k: int) -> None:
        s = stub(handle.port)
        for i in range(10):
            rows = 1 + (i % 3)
            x = rng.standard_normal((rows, 32)).astype(np.float32)
            rid = f"c{k}-{i}"
            sent[rid] = x
            s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id=rid), timeout=30)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = stub(handle.port)
    bad = {
        "bad-shape": raw_request("mlp", {"input": ("FP32", np.zeros((2, 31), np.float32))}),
        "bad-model": raw_request("nope", {"input": ("FP32", np.zeros((1, 32), np.float32))}),
    }
    for rid, request in bad.items():
        request.id = rid
        with pytest.raises(grpc.RpcError):
            s.ModelInfer(request, timeout=30)
    handle.stop(5)

    logged = rows_by_request(read_logs(tmp_path))
    assert set(logged) == set(sent) | set(bad)
    for rid, x in sent.items():
        rows = logged[rid]
        assert [r["row"] for r in rows] == list(range(len(x)))
        features = np.array([[r[n] for n in NAMES] for r in rows], dtype=np.float32)
        np.testing.assert_array_equal(features, x)
        outputs = np.array([r["out_output"] for r in rows], dtype=np.float32)
        np.testing.assert_allclose(outputs, _reference(model, x), rtol=1e-5, atol=1e-6)
        assert {r["status_code"] for r in rows} == {"OK"}
        assert all(r["model_name"] == "mlp" and r["model_version"] == "1" for r in rows)
    assert {r["status_code"] for r in logged["bad-shape"]} == {"INVALID_ARGUMENT"}
    assert {r["status_reason"] for r in logged["bad-shape"]} == {"WRONG_SHAPE"}
    assert logged["bad-model"][0]["status_code"] == "NOT_FOUND"
    assert logged["bad-model"][0]["status_reason"] == "MODEL_NOT_FOUND"


@pytest.mark.parametrize(("durability", "batch"), [("async", 1), ("sync", 1), ("async", 16)])
def test_a_request_without_id_is_answered_under_the_id_it_is_logged_under(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: Any, batch: int
) -> None:
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        log_settings=PredictionLogSettings(
            dir=tmp_path, durability=durability, flush_interval=0.05
        ),
        max_batch_size=batch,
    )
    s = stub(handle.port)
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    answered = [s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)})).id for _ in range(4)]
    refused = raw_request("mlp", {"input": ("FP32", np.zeros((1, 31), np.float32))})
    with pytest.raises(grpc.RpcError):
        s.ModelInfer(refused, timeout=30)
    handle.stop(5)
    assert all(answered) and len(set(answered)) == 4
    # Each is a random (version 4) UUID in canonical text.
    assert all(str(uuid.UUID(rid)) == rid and uuid.UUID(rid).version == 4 for rid in answered)
    logged = rows_by_request(read_logs(tmp_path))
    assert set(answered) <= set(logged) and len(logged) == 5
    assert all([r["row"] for r in logged[rid]] == [0, 1, 2] for rid in answered)
    # Without anything recording them, id-less requests are answered without one.
    plain = sidecar_factory(model_dir / "mlp.onnx")
    assert stub(plain.port).ModelInfer(raw_request("mlp", {"input": ("FP32", x)})).id == ""


@pytest.mark.parametrize(("durability", "batch"), [("async", 1), ("sync", 1), ("async", 16)])
def test_a_request_the_model_fails_on_is_logged_once(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: Any, batch: int
) -> None:
    handle = sidecar_factory(
        model_dir / "gather.onnx",
        log_settings=PredictionLogSettings(
            dir=tmp_path, durability=durability, flush_interval=0.05
        ),
        max_batch_size=batch,
        max_queue_delay=0.002,
    )
    s = stub(handle.port)
    sent = {"ok": [0, 3], "fails": [1, 9, 2], "fails-too": [7]}
    for rid, idx in sent.items():
        request = raw_request("gather", {"idx": ("INT64", np.array(idx, np.int64))}, id=rid)
        if rid == "ok":
            s.ModelInfer(request, timeout=30)
            continue
        with pytest.raises(grpc.RpcError) as err:
            s.ModelInfer(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    handle.stop(5)

    logged = rows_by_request(read_logs(tmp_path))
    assert set(logged) == set(sent)
    for rid, idx in sent.items():
        rows = logged[rid]
        # One record per row of the request, with its input, whatever its outcome.
        assert [r["row"] for r in rows] == list(range(len(idx)))
        assert [r["idx"] for r in rows] == idx
        want = ("OK", None) if rid == "ok" else ("INVALID_ARGUMENT", "MODEL_EXECUTION_FAILED")
        assert {(r["status_code"], r["status_reason"]) for r in rows} == {want}


def _load(port: int, stop: threading.Event, answered: dict[str, float], k: int) -> None:
    s = stub(port)
    x = np.ones((1, 32), np.float32)
    i = 0
    while not stop.is_set():
        rid = f"w{k}-{i}"
        i += 1
        try:
            s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id=rid), timeout=10)
        except grpc.RpcError:
            return
        answered[rid] = time.monotonic()


def _kill_under_load(
    port: int, proc: Any, seconds: float, started: Any = None
) -> tuple[dict[str, float], float]:
    """Load for ``seconds`` (counted once ``started()`` holds, when given), then SIGKILL."""
    stop = threading.Event()
    answered: dict[str, float] = {}
    threads = [
        threading.Thread(target=_load, args=(port, stop, answered, k), daemon=True)
        for k in range(4)
    ]
    for t in threads:
        t.start()
    give_up = time.monotonic() + 60
    while started is not None and not started():
        assert time.monotonic() < give_up, "the load never got started"
        time.sleep(0.05)
    time.sleep(seconds)
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    return answered, killed_at


def test_sync_mode_survives_kill_9_with_every_answered_request(
    model_dir: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        _serve_args(model_dir / "mlp.onnx", "--log-dir", str(log_dir), "--log-durability", "sync")
    )
    answered, _ = _kill_under_load(ready["port"], proc, 1.5)
    assert len(answered) > 50
    logged = set(read_logs(log_dir).column("request_id").to_pylist())
    missing = set(answered) - logged
    assert not missing, f"{len(missing)} answered requests are not in the log"


def test_async_mode_loses_at_most_one_flush_interval_on_kill_9(
    model_dir: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    interval = 0.2
    proc, ready = spawn_sidecar(
        _serve_args(
            model_dir / "mlp.onnx",
            *("--log-dir", str(log_dir), "--log-flush-interval", f"{interval * 1000:.0f}ms"),
        )
    )
    # The writer's first file marks a log being written under load (on a machine busy with
    # other work, a freshly started writer process can take a while to be scheduled); the
    # promise is about records answered while it writes.
    answered, killed_at = _kill_under_load(
        ready["port"], proc, 1.5, started=lambda: bool(list_log_files(log_dir))
    )
    assert len(answered) > 50
    files = list_log_files(log_dir)
    assert files
    for path in files:  # every file opens and reads up to its last complete batch
        for batch in read_file_batches(path):
            assert batch.num_rows >= 0
    logged = set(read_logs(log_dir).column("request_id").to_pylist())
    # A record waits at most one interval before it is written; allow scheduling slack.
    oldest_lost = min((answered[r] for r in set(answered) - logged), default=killed_at)
    assert killed_at - oldest_lost <= interval + 0.5


def test_a_failing_disk_turns_health_not_serving(model_dir: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    errors = tmp_path / "stderr.log"
    proc, ready = spawn_sidecar(
        _serve_args(
            model_dir / "mlp.onnx", "--log-dir", str(log_dir), "--log-flush-interval", "20ms"
        ),
        stderr=errors,
        launch=FAILING_DISK,
    )
    try:
        port = ready["port"]
        assert health_status(port) == "SERVING"
        s = stub(port)
        x = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
        deadline = time.monotonic() + 60
        status = "SERVING"
        while status == "SERVING" and time.monotonic() < deadline:
            for _ in range(20):
                try:
                    s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)
                except grpc.RpcError as exc:  # refused once the log failed
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            time.sleep(0.05)
            status = health_status(port)
        assert status == "NOT_SERVING"
        # Predictions are refused from now on: an answer would have no record.
        with pytest.raises(grpc.RpcError) as refused:
            s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [json.loads(line) for line in errors.read_text().splitlines() if line.startswith("{")]
    events = [line.get("event") for line in lines]
    assert "sidecar is NOT_SERVING: the prediction log failed" in events
    failure = next(line for line in lines if line.get("event") == "prediction_log_failed")
    assert failure.get("errno") is not None
    assert os.path.isdir(log_dir)


def test_workers_each_write_their_own_files_into_one_log(model_dir: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        _serve_args(
            model_dir / "mlp.onnx",
            *("--workers", "2", "--log-dir", str(log_dir), "--log-flush-interval", "50ms"),
            *("--feature-names", ",".join(NAMES)),
        )
    )
    sent: dict[str, np.ndarray] = {}
    try:
        rng = np.random.default_rng(4)
        for k in range(12):  # fresh channels spread over the workers
            s = stub(ready["port"])
            for i in range(5):
                x = rng.standard_normal((2, 32)).astype(np.float32)
                rid = f"k{k}-{i}"
                sent[rid] = x
                s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id=rid), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    logged = rows_by_request(read_logs(log_dir))
    assert set(logged) == set(sent)
    for rid, x in sent.items():
        features = np.array([[r[n] for n in NAMES] for r in logged[rid]], dtype=np.float32)
        np.testing.assert_array_equal(features, x)
    # Files are written by the workers (named by their pids), never by the supervisor.
    writers = {int(p.name.split("-p")[1].split("-")[0]) for p in list_log_files(log_dir)}
    assert writers and ready["pid"] not in writers
