"""Files of the prediction log: rotation, retention, torn files, back-pressure, bad options."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from sidecar.observers import BatchRecord, RejectedRecord
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogClosed,
    PredictionLogSettings,
    PredictionLogWriter,
    add_arguments,
    list_log_files,
    open_prediction_log,
    read_file_batches,
    read_logs,
)
from sidecar.predlog.files import sweep
from sidecar.recording import LogFeed

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _batch(i: int, rows: int = 20, width: int = 8) -> PredictionBatch:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + i
    return PredictionBatch("m", "1", [f"r{i}"], [rows], {"x": x}, {"p": x[:, :2]})


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_rotation_by_size_names_sort_by_time(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, durability="sync", rotate_size="8KiB")
    with open_prediction_log(settings) as writer:
        for i in range(60):
            writer.append(_batch(i)).result(10)
    files = list_log_files(tmp_path)
    assert len(files) > 3
    one_batch = max(p.stat().st_size for p in files[:1])
    previous_last = None
    for path in files:
        assert path.suffix == ".arrows"
        assert path.stat().st_size < 8 * 1024 + one_batch
        assert path.read_bytes().endswith(EOS)  # closed files carry the end-of-stream mark
        with pa.OSFile(str(path)) as f:
            ids = pa.ipc.open_stream(f).read_all().column("request_id").to_pylist()
        numbers = [int(r[1:]) for r in ids]
        if previous_last is not None:
            assert numbers[0] == previous_last + 1  # sorted names follow write order
        previous_last = numbers[-1]
    assert previous_last == 59


def test_rotation_by_age_closes_idle_files(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, rotate_age="300ms", retention=None)
    with open_prediction_log(settings) as writer:
        writer.append(_batch(0)).result(10)
        first = list_log_files(tmp_path)
        assert len(first) == 1
        assert _wait_for(lambda: first[0].read_bytes().endswith(EOS))
        writer.append(_batch(1)).result(10)
        assert _wait_for(lambda: len(list_log_files(tmp_path)) == 2)
    assert read_logs(tmp_path).column("request_id").unique().to_pylist() == ["r0", "r1"]


def _make_log_file(path: Path, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = pa.record_batch({"request_id": ["old"]})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, batch.schema) as w:
        w.write_batch(batch)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_retention_deletes_old_files(tmp_path: Path) -> None:
    old = tmp_path / "2020-01-01" / "20200101T000000.000000Z-p1-000001.arrows"
    recent = tmp_path / "2020-01-02" / "20200102T000000.000000Z-p1-000001.arrows"
    _make_log_file(old, age_s=3 * 86400)
    _make_log_file(recent, age_s=3600)
    registry = CollectorRegistry()
    settings = PredictionLogSettings(dir=tmp_path, retention="1d", rotate_age="1h")
    with open_prediction_log(settings, registry=registry):
        assert not old.exists() and recent.exists()
        assert registry.get_sample_value("modelplane_prediction_log_deleted_files_total") == 1


def test_retention_applies_while_running(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, retention="2s", rotate_age="200ms")
    with open_prediction_log(settings) as writer:
        writer.append(_batch(0)).result(10)
        written = writer.current_file
        assert written is not None
        assert _wait_for(lambda: written.read_bytes().endswith(EOS))
        assert written.exists()
        os.utime(written, (time.time() - 10, time.time() - 10))
        assert _wait_for(lambda: not written.exists())


def test_sweep_never_touches_the_open_file(tmp_path: Path) -> None:
    kept = tmp_path / "d" / "a.arrows"
    gone = tmp_path / "d" / "b.arrows"
    stale_tmp = tmp_path / "d" / ".c.arrows.tmp"
    other = tmp_path / "d" / "notes.txt"
    for path in (kept, gone, stale_tmp, other):
        _make_log_file(path, age_s=7200)
    assert sweep(tmp_path, 60.0, keep=[kept]) == 1
    assert kept.exists() and not gone.exists() and not stale_tmp.exists() and other.exists()


# Every file here is cut on purpose: the torn-tail warning each read gives is expected.
@pytest.mark.filterwarnings("ignore::sidecar.predlog.TornLogFile")
def test_reader_recovers_complete_batches_of_torn_files(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path / "log", durability="sync")
    writer = open_prediction_log(settings)
    offsets = []
    for i in range(5):
        writer.append(_batch(i)).result(10)
        path = writer.current_file
        assert path is not None
        offsets.append(path.stat().st_size)
    # readable while being written (no end-of-stream mark yet)
    assert path is not None
    assert len(list(read_file_batches(path))) == 5
    writer.close()
    data = path.read_bytes()
    torn = tmp_path / "torn.arrows"
    for cut, complete in [(offsets[2] + 10, 3), (offsets[3] - 1, 3), (offsets[4], 5), (50, 0)]:
        torn.write_bytes(data[:cut])
        batches = list(read_file_batches(torn))
        assert len(batches) == complete
        assert [b.column("request_id")[0].as_py() for b in batches] == [
            f"r{i}" for i in range(complete)
        ]
    torn.write_bytes(b"")
    assert list(read_file_batches(torn)) == []


def test_full_queue_makes_callers_wait_and_loses_nothing(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = PredictionLogSettings(dir=tmp_path, queue_rows=40)
    writer = PredictionLogWriter(settings, registry=registry)
    # Not started yet: nothing drains the queue, so the third append must wait for room.
    writer.append(_batch(0))
    writer.append(_batch(1))
    done = threading.Event()

    def third() -> None:
        writer.append(_batch(2))
        done.set()

    thread = threading.Thread(target=third)
    thread.start()
    assert not done.wait(0.5)
    writer.start()
    assert done.wait(10)
    thread.join()
    writer.close()
    assert read_logs(tmp_path).column("request_id").unique().to_pylist() == ["r0", "r1", "r2"]
    count = registry.get_sample_value("modelplane_prediction_log_queue_wait_seconds_count")
    waited = registry.get_sample_value("modelplane_prediction_log_queue_wait_seconds_sum")
    assert count == 1  # only the third append waited
    assert waited is not None and waited > 0
    with pytest.raises(PredictionLogClosed):
        writer.append(_batch(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 1.5}, r"within \[0, 1\]"),
        ({"sample_rate": -0.1}, r"within \[0, 1\]"),
        ({"durability": "fast"}, "'async' or 'sync'"),
        ({"flush_interval": "soon"}, "not a duration"),
        ({"rotate_size": "10"}, "greater than or equal to 4096"),
        ({"rotate_size": "lots"}, "not a size"),
        ({"retention": "10m", "rotate_age": "1h"}, "must be longer than rotate age"),
        ({"compression": "gzip"}, "'none', 'lz4' or 'zstd'"),
    ],
)
def test_bad_settings_are_refused_clearly(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PredictionLogSettings(dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_flags_build_settings_and_refuse_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="sidecar")
    add_arguments(parser)
    args = parser.parse_args(
        [
            f"--log-dir={tmp_path}",
            "--log-durability=sync",
            "--log-flush-interval=250ms",
            "--log-rotate-size=16MiB",
            "--log-rotate-age=10m",
            "--log-retention=2d",
            "--log-sample-rate=0.5",
            "--log-exclude-features=ssn,email",
        ]
    )
    settings = PredictionLogSettings.from_args(args)
    assert settings.dir == tmp_path and settings.durability == "sync"
    assert settings.flush_interval == 0.25 and settings.rotate_size == 16 * 2**20
    assert settings.rotate_age == 600 and settings.retention == 2 * 86400
    assert settings.sample_rate == 0.5 and settings.exclude_features == ("ssn", "email")
    assert PredictionLogSettings.from_args(parser.parse_args([])).dir is None
    for flag, message in [
        ("--log-sample-rate=2", "within [0, 1]"),
        ("--log-durability=fast", "invalid choice"),
        ("--log-flush-interval=1", "needs a unit"),
        ("--log-flush-interval=soon", "not a duration"),
        ("--log-rotate-size=100", "below the minimum"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([f"--log-dir={tmp_path}", flag])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_bad_batches_are_refused_and_the_writer_keeps_working(tmp_path: Path) -> None:
    x = np.ones((3, 2), np.float32)
    bad = [
        (dict(arm="blue"), ValueError, "arm must be one of"),
        (dict(row_counts=[1, 1]), ValueError, "row_counts has 2 entries for 1 requests"),
        (dict(row_counts=[4]), ValueError, "first dimension must be the 4 rows"),
        (dict(row_counts=[-1]), ValueError, "must not be negative"),
        (dict(inputs={"x": [[1.0, 2.0]] * 3}), TypeError, "must be a numpy array"),
        (dict(feature_names=["a"]), ValueError, "2 features but 1 feature names"),
        (dict(feature_names=["row", "b"]), ValueError, "clashes with a column every record"),
        (dict(request_ids=[7]), TypeError, "request_ids must be strings"),
        (dict(latencies_s=[0.1, 0.2]), ValueError, "latencies_s has 2 entries"),
        (dict(status_codes="MAYBE"), ValueError, "not a gRPC status name"),
    ]
    with open_prediction_log(PredictionLogSettings(dir=tmp_path)) as writer:
        for change, error, message in bad:
            fields = dict(
                model_name="m",
                model_version="1",
                request_ids=["a"],
                row_counts=[3],
                inputs={"x": x},
            )
            fields.update(change)
            with pytest.raises(error, match=message):
                writer.append(PredictionBatch(**fields))  # type: ignore[arg-type]
        writer.append(PredictionBatch("m", "1", ["ok"], [3], {"x": x})).result(10)
        assert writer.healthy
    assert read_logs(tmp_path).column("request_id").to_pylist() == ["ok"] * 3


def test_observer_feeds_the_log_from_hub_records(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    with open_prediction_log(PredictionLogSettings(dir=tmp_path)) as writer:
        observer = LogFeed(writer, ["a", "b"], arm="candidate")
        observer.on_batch(
            BatchRecord(
                model="m",
                version="2",
                provider="CPUExecutionProvider",
                inputs={"x": x},
                outputs={"y": x[:, 0]},
                request_ids=["p", "q"],
                trace_ids=["", "t-q"],
                row_counts=[1, 2],
                latencies_s=[0.5, 0.25],
                status=["OK", "RUN_FAILED"],
                compute_s=0.01,
                finished_at=1000.0,
            )
        )
        observer.on_rejected(
            RejectedRecord("m", "2", "r", "", "RESOURCE_EXHAUSTED", "QUEUE_FULL", "busy", at=9.0)
        )
    rows = read_logs(tmp_path).to_pylist()
    assert [(r["request_id"], r["row"], r["a"], r["b"]) for r in rows[:3]] == [
        ("p", 0, 0.0, 1.0),
        ("q", 0, 2.0, 3.0),
        ("q", 1, 4.0, 5.0),
    ]
    assert [r["status_code"] for r in rows] == ["OK", "INTERNAL", "INTERNAL", "RESOURCE_EXHAUSTED"]
    assert rows[1]["status_reason"] == "RUN_FAILED" and rows[3]["status_reason"] == "QUEUE_FULL"
    assert rows[0]["trace_id"] is None and rows[1]["trace_id"] == "t-q"
    assert rows[0]["timestamp"].timestamp() == 999.5 and rows[3]["timestamp"].timestamp() == 9.0
    assert {r["arm"] for r in rows} == {"candidate"}


def test_since_keeps_a_file_whose_mtime_is_a_little_earlier_than_its_last_record(
    tmp_path: Path,
) -> None:
    """The kernel stamps a file's mtime from a coarser clock than the records' timestamps, so
    a file's last record may be a few milliseconds younger than the file (some file systems
    keep whole seconds): ``since`` at that record still finds it."""
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    with open_prediction_log(settings) as writer:
        for i in range(3):
            writer.append(_batch(i)).result(10)
    (path,) = list_log_files(tmp_path)
    last = read_logs(tmp_path).column("timestamp")[-1].as_py()
    earlier = last.timestamp() - 1.0
    os.utime(path, (earlier, earlier))
    found = read_logs(tmp_path, since=last)
    assert found.num_rows == 20 and found.column("request_id")[0].as_py() == "r2"
    # A file written long before ``since`` is still skipped unread.
    os.utime(path, (earlier - 60, earlier - 60))
    assert read_logs(tmp_path, since=last).num_rows == 0
