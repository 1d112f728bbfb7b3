"""A log file deleted or moved while the writer has it open (a log shipper that takes files
before they are closed, a clean-up, ``rm -rf`` of the log dir): the next records go to a new
file, the writer warns naming the file and the records it held, and
``modelplane_prediction_log_files_lost_total`` counts it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
    read_logs,
)
from sidecar.predlog import writer as writer_module

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
LOST = "modelplane_prediction_log_files_lost_total"


class _Warnings:
    """Stands in for the writer's logger: keeps its warnings."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.seen.append({"event": event, **fields})

    def error(self, event: str, **fields: Any) -> None:
        raise AssertionError(f"the writer failed: {event} {fields}")


@pytest.fixture
def warned(monkeypatch: pytest.MonkeyPatch) -> _Warnings:
    recorder = _Warnings()
    monkeypatch.setattr(writer_module, "log", recorder)
    return recorder


def _batch(request_id: str, rows: int = 3) -> PredictionBatch:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return PredictionBatch("m", "1", [request_id], [rows], {"x": x}, {"y": x[:, :1]})


def _ids(path: Path) -> list[str]:
    with pa.OSFile(str(path)) as f:
        return pa.ipc.open_stream(f).read_all().column("request_id").to_pylist()


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_a_deleted_file_is_replaced_by_a_new_one(
    tmp_path: Path, warned: _Warnings, durability: str
) -> None:
    registry = CollectorRegistry()
    settings = PredictionLogSettings(dir=tmp_path, durability=durability)
    with open_prediction_log(settings, registry=registry) as writer:
        writer.append(_batch("before"))
        writer.flush()
        first = writer.current_file
        assert first is not None
        first.unlink()  # a shipper that uploaded it, or a clean-up
        writer.append(_batch("after"))
        writer.flush()
        second = writer.current_file
        assert second is not None and second != first and second.exists()
        assert _ids(second) == ["after"] * 3  # readable while open, the later batch only
        assert registry.get_sample_value(LOST) == 1
    assert second.read_bytes().endswith(EOS)
    assert list_log_files(tmp_path) == [second]
    assert read_logs(tmp_path).column("request_id").to_pylist() == ["after"] * 3
    assert [(w["event"], w["file"], w["how"], w["records"]) for w in warned.seen] == [
        ("prediction_log_file_taken", str(first), "deleted", 3)
    ]


def test_a_removed_log_dir_is_made_again(tmp_path: Path, warned: _Warnings) -> None:
    registry = CollectorRegistry()
    log_dir = tmp_path / "predictions"
    with open_prediction_log(PredictionLogSettings(dir=log_dir), registry=registry) as writer:
        for i in range(2):
            writer.append(_batch(f"before-{i}", rows=2))
        writer.flush()
        shutil.rmtree(log_dir)  # rm -rf predictions
        writer.append(_batch("after"))
        writer.flush()
        assert registry.get_sample_value(LOST) == 1
    assert read_logs(log_dir).column("request_id").to_pylist() == ["after"] * 3
    assert [(w["how"], w["records"]) for w in warned.seen] == [("deleted", 4)]


def test_a_moved_file_is_closed_where_it_went(tmp_path: Path, warned: _Warnings) -> None:
    registry = CollectorRegistry()
    log_dir, shipped = tmp_path / "log", tmp_path / "shipped.arrows"
    with open_prediction_log(PredictionLogSettings(dir=log_dir), registry=registry) as writer:
        writer.append(_batch("before"))
        writer.flush()
        first = writer.current_file
        assert first is not None
        first.rename(shipped)  # a shipper that moves files it takes
        writer.append(_batch("after"))
        writer.flush()
        assert registry.get_sample_value(LOST) == 1
        # The moved file got its end-of-stream mark and nothing of the later batch.
        assert shipped.read_bytes().endswith(EOS)
        assert _ids(shipped) == ["before"] * 3
    assert read_logs(log_dir).column("request_id").to_pylist() == ["after"] * 3
    assert [(w["how"], w["records"]) for w in warned.seen] == [("moved", 3)]


def test_a_file_replaced_under_its_name_is_left_alone(tmp_path: Path, warned: _Warnings) -> None:
    registry = CollectorRegistry()
    with open_prediction_log(PredictionLogSettings(dir=tmp_path), registry=registry) as writer:
        writer.append(_batch("before"))
        writer.flush()
        first = writer.current_file
        assert first is not None
        first.unlink()
        first.write_bytes(b"someone else's file")
        writer.append(_batch("after"))
        writer.flush()
    assert first.read_bytes() == b"someone else's file"
    assert registry.get_sample_value(LOST) == 1
    assert [w["how"] for w in warned.seen] == ["deleted"]
    others = [p for p in list_log_files(tmp_path) if p != first]
    assert [_ids(p) for p in others] == [["after"] * 3]


def test_files_left_in_place_are_kept_open(tmp_path: Path, warned: _Warnings) -> None:
    registry = CollectorRegistry()
    with open_prediction_log(PredictionLogSettings(dir=tmp_path), registry=registry) as writer:
        for i in range(5):
            writer.append(_batch(f"r{i}"))
            writer.flush()
    assert len(list_log_files(tmp_path)) == 1
    assert registry.get_sample_value(LOST) == 0
    assert warned.seen == []
