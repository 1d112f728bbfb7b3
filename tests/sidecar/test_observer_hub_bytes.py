"""The observer hub's buffer is bounded in bytes as well as in records: requests of thousands
of rows (a record of megabytes each) must not fill memory before the record count is reached.
A lossless hub makes publishers wait for room, a lossy one drops and counts; and a sidecar
logging such requests keeps its memory (and its observer process's) bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sidecar_helpers import children, raw_request, spawn_sidecar

from modelplane.oip import grpc_service_pb2_grpc
from modelplane.testing import onnx_models
from sidecar.observers import BatchRecord, ObserverHub


def _record(rows: int) -> BatchRecord:
    return BatchRecord(
        model="m",
        version="1",
        provider="CPUExecutionProvider",
        inputs={"x": np.zeros((rows, 32), np.float32)},
        outputs={"y": np.zeros((rows, 2), np.float32)},
        request_ids=["r"],
        trace_ids=[""],
        row_counts=[rows],
        latencies_s=[0.001],
        status=["OK"],
        compute_s=0.001,
    )


class _Held:
    """An observer stuck until released (a slow disk)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen = 0

    def on_records(self, records: Any) -> None:
        self.release.wait(30)
        self.seen += len(records)


def test_a_lossless_hub_waits_for_room_in_bytes() -> None:
    from sidecar.observers import record_bytes

    record = _record(4096)  # 557,056 bytes of tensors
    assert record_bytes(record) == 4096 * 34 * 4
    held = _Held()
    hub = ObserverHub(
        [held], capacity=1000, capacity_bytes=2 * record_bytes(record), linger=0, lossless=True
    )
    hub.start()
    published = 0

    def publish() -> None:
        nonlocal published
        for _ in range(6):
            hub.publish(_record(4096))
            published += 1

    thread = threading.Thread(target=publish, daemon=True)
    try:
        thread.start()
        # The stuck observer holds what the dispatch thread took (one record or two), the
        # buffer's bytes hold two more: then the publisher waits, far below the 1,000 records
        # the count alone would allow.
        last, deadline = -1, time.monotonic() + 10
        while published != last and time.monotonic() < deadline:
            last = published
            time.sleep(0.5)
        assert 3 <= published <= 4
        assert thread.is_alive()
        held.release.set()
        thread.join(10)
        assert published == 6
    finally:
        held.release.set()
        hub.close()
    assert held.seen == 6 and hub.dropped == 0


def test_a_lossy_hub_drops_past_its_bytes_and_takes_one_large_record_alone() -> None:
    held = _Held()
    hub = ObserverHub([held], capacity=1000, capacity_bytes=1000, linger=0)
    hub.start()
    try:
        hub.publish(_record(4096))  # larger than the bound: taken, the buffer being empty
        deadline = time.monotonic() + 10
        while hub._buffer and time.monotonic() < deadline:  # with the observer now
            time.sleep(0.01)
        hub.publish(_record(4096))  # the buffer is empty again: taken
        hub.publish(_record(1))  # 136 bytes on top of 557,056: no room
        assert hub.dropped == 1
    finally:
        held.release.set()
        hub.close()
    assert held.seen == 2


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.soak
def test_requests_of_thousands_of_rows_keep_the_logging_sidecars_memory_bounded(
    tmp_path: Path,
) -> None:
    """8 callers of 4,096-row requests with the prediction log on (in its observer process):
    before the hub was bounded in bytes, the serving process grew past 3 GB in 12 s."""
    seconds = float(os.environ.get("MODELPLANE_SOAK_SECONDS", "8"))
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    proc, ready = spawn_sidecar(
        ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu",
         "--log-dir", str(tmp_path / "log")],
        stderr=tmp_path / "stderr.log",
    )  # fmt: skip
    peak: dict[int, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        rows = np.random.default_rng(0).standard_normal((4096, 32)).astype(np.float32)
        request = raw_request("mlp", {"input": ("FP32", rows)})
        with grpc.insecure_channel(
            f"127.0.0.1:{ready['port']}", options=[("grpc.max_receive_message_length", -1)]
        ) as channel:
            s = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    s.ModelInfer(request, timeout=30)
                except BaseException as exc:
                    errors.append(exc)
                    return

    callers = [threading.Thread(target=call, daemon=True) for _ in range(8)]
    try:
        for t in callers:
            t.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for pid in (proc.pid, *children(proc.pid)):
                with contextlib.suppress(FileNotFoundError):
                    peak[pid] = max(peak.get(pid, 0), _rss_kb(pid))
            time.sleep(0.25)
        stop.set()
        for t in callers:
            t.join(30)
        assert not errors, errors[:1]
        # Bounded: each process well under 1.5 GB (about 0.55 GB seen).
        assert max(peak.values()) < 1_500_000, {p: kb // 1024 for p, kb in peak.items()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()


def test_a_managed_sidecars_wrapped_records_count_their_tensors() -> None:
    """A managed sidecar's hub carries records wrapped with their version and arm, and shadow
    records with the champion's outputs: their bytes count as the tensors they hold."""
    from sidecar.managed.shadow import ShadowRecord
    from sidecar.managed.versions import Served
    from sidecar.observers import record_bytes

    inner = _record(4096)
    assert record_bytes(Served(inner, None, "champion")) == record_bytes(inner) == 557_056
    champion = {"y": np.zeros((4096, 2), np.float32)}
    shadow = ShadowRecord(inner, None, champion)
    assert record_bytes(shadow) == 557_056 + 4096 * 2 * 4


def test_publishers_woken_together_do_not_overshoot_the_bytes() -> None:
    """Room is checked and taken in one step: eight publishers woken by one drain do not all
    pass for an empty buffer."""
    from sidecar.observers import record_bytes

    one = record_bytes(_record(4096))
    held = _Held()
    hub = ObserverHub([held], capacity=1000, capacity_bytes=2 * one, linger=0, lossless=True)
    hub.start()
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, hub._bytes)
            time.sleep(0.0005)

    publishers = [
        threading.Thread(target=lambda: [hub.publish(_record(4096)) for _ in range(3)])
        for _ in range(8)
    ]
    watcher = threading.Thread(target=watch)
    try:
        watcher.start()
        for t in publishers:
            t.start()
        time.sleep(0.5)
        for _ in range(30):  # drain a record or two at a time, while all eight wait
            held.release.set()
            time.sleep(0.02)
            held.release.clear()
            time.sleep(0.02)
        held.release.set()
        for t in publishers:
            t.join(30)
    finally:
        stop.set()
        held.release.set()
        watcher.join(10)
        hub.close()
    assert held.seen == 24 and hub.dropped == 0
    assert most <= 2 * one


def test_a_publisher_that_will_not_wait_drops_and_a_closed_hub_takes_nothing() -> None:
    held = _Held()
    hub = ObserverHub([held], capacity=1, linger=0, lossless=True)
    hub.start()
    try:
        hub.publish(_record(1))  # taken by the dispatch thread, which the observer holds
        deadline = time.monotonic() + 10
        while hub._buffer and time.monotonic() < deadline:
            time.sleep(0.01)
        hub.publish(_record(1))  # fills the buffer (capacity 1)
        hub.publish(_record(1), wait=False)  # a shed call's record: no room, dropped
        assert hub.dropped == 1
    finally:
        held.release.set()
        hub.close()
    hub.publish(_record(1))  # after close: never delivered, so counted as dropped
    assert hub.dropped == 2 and held.seen == 2


def test_strings_count_with_their_bytes() -> None:
    from sidecar.observers import RejectedRecord, record_bytes

    blobs = np.array([b"x" * 1_000_000] * 4, dtype=object)
    record = RejectedRecord("m", "1", "r", "", "INVALID_ARGUMENT", "R", "m", inputs={"b": blobs})
    assert record_bytes(record) >= 4_000_000
