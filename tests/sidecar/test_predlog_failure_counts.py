"""What a prediction log that fails for real says it lost: the writer runs in a subprocess
under a small ``RLIMIT_FSIZE``, so its writes fail with EFBIG; its JSON log lines are read
from stderr and its files read back with pyarrow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sidecar_helpers import ROOT

from sidecar.predlog import read_logs

_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path

import numpy as np

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

from modelplane.server.logging import configure_logging
from sidecar.predlog import (
    PredictionBatch, PredictionLogError, PredictionLogSettings, RejectedRequest,
    open_prediction_log,
)

configure_logging("info")
writer = open_prediction_log(PredictionLogSettings(dir=Path(sys.argv[1]), flush_interval=60))

def rows(request_id, n):
    return PredictionBatch("m", "1", [request_id], [n], {"input": np.ones((n, 3), np.float32)})

writer.append(rows("small", 10))
writer.flush()
# Far more than the 32 KiB a file may hold: this round's write fails.
writer.append(rows("big", 4000))
try:
    writer.flush()
except PredictionLogError:
    pass
refused = 0
for batch in (rows("after", 7), RejectedRequest("after-rejected", "INVALID_ARGUMENT", "BAD")):
    try:
        (writer.append if isinstance(batch, PredictionBatch) else writer.append_rejected)(batch)
    except PredictionLogError:
        refused += 1
writer.close()  # waits for the writer thread, which logs the failure after failing tickets
dropped = {
    s.labels["kind"]: s.value
    for m in writer.metrics.registry.collect() for s in m.samples
    if s.name == "modelplane_prediction_log_dropped_records_total"
}
print(json.dumps({"refused": refused, "dropped": dropped}))
"""


def _run_failing_writer(log_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(log_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return json.loads(done.stdout.strip().splitlines()[-1]), lines


def test_the_failure_line_counts_the_rows_of_the_round_that_failed(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    result, lines = _run_failing_writer(log_dir)
    failure = next(line for line in lines if line.get("event") == "prediction_log_failed")
    assert failure["errno"] == 27  # EFBIG
    # The 4,000 rows being written when the disk failed are lost, and the line says so.
    assert failure["unwritten_rows"] == 4000
    assert result["refused"] == 2
    # Counted as dropped: the failed round's rows, and what was appended after the failure.
    assert result["dropped"] == {"prediction": 4000 + 7, "rejected": 1}
    # What was written before the failure reads back; nothing of the failed round does.
    table = read_logs(log_dir)
    assert set(table.column("request_id").to_pylist()) == {"small"}
    assert table.num_rows == 10
