"""The label log's files beside the prediction log: rotation by age, and retention that expires
closed label files but never one a writer still has open (here or in another process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from sidecar.managed.labels import LABEL_SCHEMA, LabelLog
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
    read_file_batches,
)
from sidecar.predlog.files import sweep

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _labels(*request_ids: str) -> pa.RecordBatch:
    n = len(request_ids)
    return pa.RecordBatch.from_pydict(
        {
            "timestamp": [0] * n,
            "request_id": list(request_ids),
            "row": [0] * n,
            "class_label": [1] * n,
            "target": [None] * n,
            "matched": [False] * n,
            "arm": [None] * n,
            "model_version": [None] * n,
            "correct": [None] * n,
        },
        schema=LABEL_SCHEMA,
    )


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def _ids(path: Path) -> list[str]:
    return [r for b in read_file_batches(path) for r in b.column("request_id").to_pylist()]


def test_retention_spares_the_idle_open_label_file_and_expires_closed_ones(
    tmp_path: Path,
) -> None:
    closed_log = LabelLog(tmp_path)
    closed_log.append(_labels("old"))
    closed_log.close()
    (closed,) = list_log_files(tmp_path, labels=True)
    label_log = LabelLog(tmp_path)
    label_log.append(_labels("a"))
    open_file = next(p for p in list_log_files(tmp_path, labels=True) if p != closed)
    # No label for longer than the retention: both label files look expired.
    _age(closed, 3600)
    _age(open_file, 3600)
    settings = PredictionLogSettings(dir=tmp_path, retention="2s", rotate_age="1s")
    with open_prediction_log(settings) as writer:  # sweeps when it starts
        x = np.ones((1, 2), np.float32)
        writer.append(PredictionBatch("m", "1", ["p"], [1], {"x": x})).result(10)
    assert not closed.exists()
    assert open_file.exists()
    label_log.append(_labels("b"))
    label_log.close()
    assert list_log_files(tmp_path, labels=True) == [open_file]
    assert _ids(open_file) == ["a", "b"]
    assert open_file.read_bytes().endswith(EOS)


_HOLDER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import pyarrow as pa
from sidecar.managed.labels import LABEL_SCHEMA, LabelLog
from sidecar.predlog import list_log_files

def labels(rid):
    columns = {f.name: [None] for f in LABEL_SCHEMA}
    columns.update(timestamp=[0], request_id=[rid], row=[0], class_label=[1], matched=[False])
    return pa.RecordBatch.from_pydict(columns, schema=LABEL_SCHEMA)

log = LabelLog(Path(sys.argv[1]))
log.append(labels("first"))
print(list_log_files(Path(sys.argv[1]), labels=True)[0], flush=True)
sys.stdin.readline()
log.append(labels("second"))
log.close()
"""


def test_sweep_skips_a_label_file_open_in_another_process(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        path = Path(holder.stdout.readline().strip())
        _age(path, 7200)
        assert sweep(tmp_path, 60.0) == 0
        assert path.exists()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert _ids(path) == ["first", "second"]
    _age(path, 7200)
    assert sweep(tmp_path, 60.0) == 1  # closed now, so it expires
    assert not path.exists()


def test_label_log_rotates_by_age(tmp_path: Path) -> None:
    label_log = LabelLog(tmp_path, rotate_age=0.2)
    label_log.append(_labels("a"))
    label_log.append(_labels("b"))
    time.sleep(0.3)
    label_log.append(_labels("c"))
    first, second = list_log_files(tmp_path, labels=True)
    assert first.read_bytes().endswith(EOS)
    assert _ids(first) == ["a", "b"] and _ids(second) == ["c"]
    _age(first, 7200)
    _age(second, 7200)
    assert sweep(tmp_path, 60.0) == 1
    assert not first.exists() and second.exists()
    label_log.close()
    assert _ids(second) == ["c"]
