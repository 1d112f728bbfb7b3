"""A compaction killed while writing Parquet: every file pyarrow or DuckDB sees stays whole.

The child process is killed for real in the middle of a write: a file size limit makes the
kernel send it SIGXFSZ as soon as a file it writes grows past the limit.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as ds

from sidecar.predlog import PredictionBatch, PredictionLogSettings, compact, open_prediction_log
from sidecar.predlog.compact import STALE_TMP_S

REPO = Path(__file__).resolve().parents[2]
LIMIT = 256 * 1024

CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default kills
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
from sidecar.predlog import compact
compact(sys.argv[1], sys.argv[2])
"""


def _session(directory: Path, tag: str, rows: int) -> None:
    """One sidecar run writing one log file: one request ``tag`` of ``rows`` random rows."""
    x = np.random.default_rng(len(tag)).random((rows, 16), dtype=np.float32)
    with open_prediction_log(PredictionLogSettings(dir=directory, durability="sync")) as writer:
        writer.append(PredictionBatch("m", "1", [tag], [rows], {"x": x})).result(30)


def _killed_compaction(log: Path, out: Path) -> int:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(log), str(out), str(LIMIT)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    return child.returncode


def _counts(out: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per request id as pyarrow datasets and DuckDB read the folder."""
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table(["request_id"])
    by_pyarrow: dict[str, int] = {}
    for rid in table.column("request_id").to_pylist():
        by_pyarrow[rid] = by_pyarrow.get(rid, 0) + 1
    query = (
        f"SELECT request_id, count(*) FROM read_parquet('{out}/**/*.parquet', "
        "hive_partitioning = true, union_by_name = true) GROUP BY request_id"
    )
    by_duckdb = dict(duckdb.connect().sql(query).fetchall())
    return by_pyarrow, by_duckdb


def _parquet(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.rglob("*.parquet")}


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file()]


def test_killed_compactions_leave_the_archive_whole_and_a_later_run_cleans_up(
    tmp_path: Path,
) -> None:
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] in (resource.RLIM_INFINITY, -1)
    log, out = tmp_path / "log", tmp_path / "parquet"
    _session(log, "small", 5)
    _session(log, "big", 40_000)  # its Parquet is several times LIMIT

    # Killed while writing the second file: the first is complete, the second invisible.
    assert _killed_compaction(log, out) == -signal.SIGXFSZ
    assert _counts(out) == ({"small": 5}, {"small": 5})
    assert _temporaries(out)

    assert compact(log, str(out)).rows == 40_005
    whole = _parquet(out)
    assert _counts(out) == ({"small": 5, "big": 40_000},) * 2

    # Killed again while rewriting the big file: the archive keeps its complete version.
    assert _killed_compaction(log, out) == -signal.SIGXFSZ
    assert _parquet(out) == whole
    assert _counts(out) == ({"small": 5, "big": 40_000},) * 2

    # Young temporaries may be a compaction still running; stale ones go.
    compact(log, str(out))
    left = _temporaries(out)
    assert left
    stale = time.time() - 2 * STALE_TMP_S
    for path in left:
        os.utime(path, (stale, stale))
    assert compact(log, str(out)).rows == 40_005
    assert _temporaries(out) == []
    assert _counts(out) == ({"small": 5, "big": 40_000},) * 2
