"""Reading a log of many small batches (a sidecar answering about one request a second flushes
one-row batches): memory in proportion to the records, not to the batches; ``--limit`` stops
reading, and ``--columns`` keeps only those columns while reading."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import sidecar.predlog.collect as collect
import sidecar.predlog.reader as reader
from modelplane.cli import main
from modelplane.testing.launch import prefix
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
    read_file_batches,
    read_logs,
)

#: One-row batches in the file: about 8 hours at one request a second.
BATCHES = 30_000
#: Growth of peak RSS allowed while reading them: the file's mapping (about 36 MB) and the
#: rows. Keeping every batch took about 10 KB each (over 290 MB here).
BOUND_MB = 120

#: Peak RSS is read as VmHWM, this program's own: ``ru_maxrss`` also counts the memory of the
#: process that started it (Linux keeps it across the ``vfork`` and ``exec``).
_MEASURE = """
import re, sys
from pathlib import Path
from sidecar.predlog import read_logs
def peak_kb():
    return int(re.search(r"VmHWM:\\s*(\\d+)", Path("/proc/self/status").read_text()).group(1))
before = peak_kb()
table = read_logs(sys.argv[1])
print(table.num_rows, (peak_kb() - before) // 1024)
"""


def _one_row_batches(log: Path, count: int) -> None:
    """A log file of ``count`` one-row batches, as the writer flushes them one by one."""
    seed_dir = log.parent / f"{log.name}-seed"
    with open_prediction_log(PredictionLogSettings(dir=seed_dir, durability="sync")) as writer:
        x = np.ones((1, 4), np.float32)
        writer.append(PredictionBatch("m", "1", ["r"], [1], {"x": x})).result(10)
    seed = next(read_file_batches(list_log_files(seed_dir)[0]))
    folder = log / "2026-11-29"
    folder.mkdir(parents=True)
    with (
        open(folder / "20261129T070000.000000Z-p1-000001.arrows", "wb") as fh,
        pa.ipc.new_stream(fh, seed.schema) as stream,
    ):
        for _ in range(count):
            stream.write_batch(seed)


@pytest.fixture(scope="module")
def many_batches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("many") / "log"
    _one_row_batches(log, BATCHES)
    return log


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_many_one_row_batches_are_read_in_bounded_memory(many_batches: Path) -> None:
    command = [*prefix(), sys.executable, "-c", _MEASURE, str(many_batches)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=True)
    rows, grown_mb = map(int, done.stdout.split())
    assert rows == BATCHES
    assert grown_mb < BOUND_MB, f"reading {BATCHES} one-row batches took {grown_mb} MB"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many batches the reader has taken from the files."""
    taken = [0]

    def counting(path: Path) -> Iterator[pa.RecordBatch]:
        for batch in read_file_batches(path):
            taken[0] += 1
            yield batch

    monkeypatch.setattr(reader, "read_file_batches", counting)
    yield taken


def test_limit_stops_reading_and_columns_are_kept_while_reading(
    many_batches: Path, counted: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--output", "json", "logs", "read", str(many_batches), "--limit", "1"]
    assert main([*argv, "--columns", "request_id,row"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"request_id": "r", "row": 0}]
    assert counted[0] == 1
    three = read_logs(many_batches, limit=3, columns=["x_3", "request_id"])
    assert three.column_names == ["x_3", "request_id"] and three.num_rows == 3
    assert counted[0] == 4
    assert read_logs(many_batches, limit=0).num_rows == 0 and counted[0] == 4


def _write(log: Path, version: str, ids: list[str], width: int) -> None:
    """One sidecar run of ``version`` whose input is ``width`` wide, one request per append."""
    settings = PredictionLogSettings(dir=log, durability="sync")
    with open_prediction_log(settings) as writer:
        for i, rid in enumerate(ids):
            x = np.full((2, width), float(i), np.float32)
            writer.append(PredictionBatch("m", version, [rid], [2], {"x": x})).result(10)


def test_small_chunks_keep_the_order_and_columns_of_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    _write(log, "1", [f"a{i}" for i in range(5)], width=2)
    _write(log, "2", [f"b{i}" for i in range(4)], width=3)
    _write(log, "1", [f"c{i}" for i in range(3)], width=2)
    expected = pa.concat_tables(
        [pa.Table.from_batches(list(read_file_batches(p))) for p in list_log_files(log)],
        promote_options="default",
    )
    monkeypatch.setattr(collect, "CHUNK_BATCHES", 2)
    monkeypatch.setattr(collect, "CHUNK_ROWS", 3)
    table = read_logs(log)
    assert table.schema.equals(expected.schema)
    assert table.to_pylist() == expected.to_pylist()
    # A column asked for that only other records have is null; one no file has is refused.
    v1 = read_logs(log, model_version="1", columns=["request_id", "x_2"], limit=6)
    assert v1.to_pylist() == [{"request_id": f"a{i // 2}", "x_2": None} for i in range(6)]
    assert v1.schema.field("x_2").type == pa.float32()
    with pytest.raises(ValueError, match="no column x_9 in the log"):
        read_logs(log, columns=["x_9"])
