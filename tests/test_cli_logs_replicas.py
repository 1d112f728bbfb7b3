"""`modelplane logs read|compact` on a folder holding several replicas' log dirs (each written
by the real writer, in its date folders), read back with pyarrow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from modelplane.cli import main
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
)


def _replica(directory: Path, request_ids: list[str]) -> None:
    """One replica's log, in its date folder: a file per request (a writer each)."""
    for i, rid in enumerate(request_ids):
        with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
            writer.append(
                PredictionBatch("m", "1", [rid], [2], {"x": np.full((2, 3), i, np.float32)})
            )


@pytest.fixture
def replicas(tmp_path: Path) -> Path:
    parent = tmp_path / "logs"
    _replica(parent / "replica-a", ["a0", "a1"])
    _replica(parent / "replica-b" / "nested", ["b0"])
    return parent


def test_read_finds_every_replicas_files(replicas: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--output", "json", "logs", "read", str(replicas)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert sorted((r["request_id"], r["row"]) for r in records) == [
        (rid, row) for rid in ("a0", "a1", "b0") for row in (0, 1)
    ]
    # Within a log dir, files stay oldest first; one log dir follows the other.
    order = [r["request_id"] for r in records if r["row"] == 0]
    assert order == ["a0", "a1", "b0"]


def test_listing_a_single_log_dir_is_as_before(replicas: Path) -> None:
    one = replicas / "replica-a"
    files = list_log_files(one)
    assert len(files) == 2 and all(p.parent.parent == one for p in files)
    assert files == sorted(files, key=lambda p: p.relative_to(one).as_posix())
    assert list_log_files(replicas) == [*files, *list_log_files(replicas / "replica-b")]


def test_compact_writes_every_replicas_records(
    replicas: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "parquet"
    assert main(["--output", "json", "logs", "compact", str(replicas), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 6 and summary["source_files"] == 3
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("request_id").to_pylist()) == ["a0", "a0", "a1", "a1", "b0", "b0"]
