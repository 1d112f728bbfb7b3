"""Torn tails. A writer whose disk fails cuts its files back to their last complete batch and
ends them with the end-of-stream mark, so any Arrow reader (plain pyarrow here) reads them;
the writer runs in a subprocess under a small ``RLIMIT_FSIZE``, so its writes fail with
EFBIG. Readers warn about a file a crash left cut (``read_logs``: a :class:`TornLogFile`
warning; ``modelplane logs read|compact``: a ``warning:`` line on stderr), but not about one a
writer is still writing."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sidecar_helpers import ROOT

from modelplane.cli import main
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    TornLogFile,
    list_log_files,
    open_prediction_log,
    read_logs,
)

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

_FAILING_WRITER = """
import json, resource, signal, sys
from pathlib import Path

import numpy as np

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

from sidecar.predlog import PredictionBatch, PredictionLogError, PredictionLogSettings
from sidecar.predlog import open_prediction_log

settings = PredictionLogSettings(dir=Path(sys.argv[1]), durability=sys.argv[2], flush_interval=60)
writer = open_prediction_log(settings)

def rows(request_id, n):
    x = np.arange(n * 8, dtype=np.float32).reshape(n, 8)
    return PredictionBatch("m", "1", [request_id], [n], {"x": x})

for i in range(3):
    writer.append(rows(f"kept-{i}", 100))
    writer.flush()
# Far more than the 256 KiB a file may hold: this round's write fails midway.
writer.append(rows("big", 40000))
try:
    writer.flush()
    failed = False
except PredictionLogError:
    failed = True
writer.close()
print(json.dumps({"failed": failed}))
"""


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_after_a_failed_write_plain_pyarrow_reads_exactly_the_flushed_rows(
    tmp_path: Path, durability: str
) -> None:
    log = tmp_path / "log"
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_WRITER, str(log), durability],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["failed"]
    [path] = list_log_files(log)
    assert path.stat().st_size < 256 * 1024
    assert path.read_bytes().endswith(EOS)
    with pa.OSFile(str(path)) as f:
        table = pa.ipc.open_stream(f).read_all()  # no torn message left in the file
    assert table.column("request_id").to_pylist() == [
        f"kept-{i}" for i in range(3) for _ in range(100)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornLogFile)
        assert read_logs(log).num_rows == 300


def _cut_log(log: Path) -> Path:
    """A closed log file of two batches, then its end cut off inside the second one, as a
    crash mid-write leaves it."""
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        for i in range(2):
            x = np.full((4, 3), i, np.float32)
            writer.append(PredictionBatch("m", "1", [f"r{i}"], [4], {"x": x})).result(10)
    [path] = list_log_files(log)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(EOS) - 40])
    return path


def test_read_logs_warns_about_a_file_a_crash_cut(tmp_path: Path) -> None:
    path = _cut_log(tmp_path / "log")
    with pytest.warns(TornLogFile, match="cut short") as seen:
        table = read_logs(tmp_path / "log")
    assert table.column("request_id").to_pylist() == ["r0"] * 4
    assert [str(path) in str(w.message) for w in seen] == [True]


def test_a_file_still_being_written_is_read_without_a_warning(tmp_path: Path) -> None:
    path = _cut_log(tmp_path / "log")
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as the writer holds its open files
        with warnings.catch_warnings():
            warnings.simplefilter("error", TornLogFile)
            assert read_logs(tmp_path / "log").num_rows == 4


def test_the_cli_prints_a_warning_line_per_cut_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _cut_log(tmp_path / "log")
    assert main(["--output", "json", "logs", "read", str(tmp_path / "log")]) == 0
    out, err = capsys.readouterr()
    assert [r["request_id"] for r in json.loads(out)] == ["r0"] * 4
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: prediction log file ")
    assert str(path) in lines[0] and "cut short" in lines[0]
    argv = ["--output", "json", "logs", "compact", str(tmp_path / "log")]
    assert main([*argv, "--out", str(tmp_path / "parquet")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"] == 4
    assert [line.startswith("warning: ") and str(path) in line for line in err.splitlines()] == [
        True
    ]
