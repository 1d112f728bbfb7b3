"""`make demo` (python -m modelplane.demo) run once, end to end, in a temporary folder: what it
prints is true of what it did, and what it suggests running works."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.conftest import BIN

pytestmark = pytest.mark.slow


@dataclass
class DemoRun:
    """The folder the demo ran in and what it printed."""

    folder: Path
    stdout: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    folder = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "modelplane.demo"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return DemoRun(folder, result.stdout)


def test_the_suggested_logs_command_is_bounded_and_short(demo: DemoRun) -> None:
    # Reading the whole log as a table took a minute and printed megabytes of squeezed columns.
    found = re.search(r"(modelplane logs read [^`\n]*)", demo.stdout)
    assert found, demo.stdout
    argv = shlex.split(found.group(1).strip())
    # Bounded by what it asks for: a few rows of a few columns, not the whole log.
    assert argv[argv.index("--limit") + 1] == "10" and "--columns" in argv
    result = subprocess.run(
        [str(BIN / "modelplane"), *argv[1:]],
        cwd=demo.folder,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 3 <= len(lines) <= 20, result.stdout[:2000]
    assert max(map(len, lines)) <= 120
    assert "… │" not in result.stdout  # no column squeezed to an ellipsis


def test_each_canary_step_prints_the_shares_answered_over_that_step(demo: DemoRun) -> None:
    # The shares were sampled when a step began, so each line showed the step before it.
    steps = re.findall(
        r"answered over step (\d) of 3 \((\d+)%\): (.*) of (\d+) answers", demo.stdout
    )
    assert [s[:2] for s in steps] == [("1", "10"), ("2", "50"), ("3", "100")], demo.stdout
    for _, percent, shares, total in steps:
        by_version = {v: int(p) for v, p in re.findall(r"(v\d) (\d+)%", shares)}
        assert int(total) >= 30
        assert abs(by_version.get("v2", 0) - int(percent)) <= 10, (percent, shares)


def _drift_window(stdout: str, when: str) -> tuple[int, int]:
    found = re.search(
        rf"{when}, the sidecar's drift window: (\d+) rows[^,]*, (\d+)% of features drifted", stdout
    )
    assert found, stdout
    return int(found.group(1)), int(found.group(2))


def test_undrifted_traffic_reads_undrifted_and_scaled_traffic_drifted(demo: DemoRun) -> None:
    # Replaying the 171 holdout rows read as 70-80% drifted before any shift (the KS test on
    # a window of thousands of rows drawn from 171), and the report was read after the shift
    # had been turned off again.
    rows, share = _drift_window(demo.stdout, "before the shift")
    assert rows > 0 and share <= 10, demo.stdout
    scaled = re.search(r"with the shift, .*?\(the last (\d+) scaled\)", demo.stdout)
    assert scaled and int(scaled.group(1)) > 0, demo.stdout
    rows, share = _drift_window(demo.stdout, "with the shift")
    # The window read during the shift holds shifted rows only, so nearly every feature drifts
    # (the README's words); before, a window still mostly of earlier rows read 50%.
    assert rows == int(scaled.group(1)), demo.stdout
    assert share >= 90, demo.stdout
    drift_lines = [line for line in demo.stdout.splitlines() if "drift" in line]
    assert re.search(r"drift event on the champion \(v2, \d+ rows .*\): max_psi", demo.stdout), (
        drift_lines
    )


def test_ground_truth_goes_back_only_for_rows_the_models_never_saw(tmp_path: Path) -> None:
    """Live accuracy measures what the holdout measures: the traffic covers the whole data set
    (so drift windows see the training population), but only the holdout rows' labels are
    sent back."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from modelplane.demo._training import train

    trained = train(tmp_path)
    holdout = pacsv.read_csv(trained.holdout)
    training = pq.read_table(trained.train)
    features = [n for n in holdout.column_names if n != "diagnosis"]

    def rows(table: pa.Table) -> list[tuple[float, ...]]:
        cols = [np.asarray(table.column(n), dtype=np.float32) for n in features]
        return [tuple(r) for r in np.stack(cols, axis=1)]

    x, y = np.asarray(trained.x_traffic), np.asarray(trained.y_traffic)
    labeled = y >= 0
    assert len(x) == holdout.num_rows + training.num_rows
    assert {tuple(r) for r in x[labeled]} == set(rows(holdout))
    assert {tuple(r) for r in x[~labeled]} == set(rows(training))
    truth = dict(zip(map(tuple, x[labeled]), y[labeled], strict=True))
    assert [truth[r] for r in rows(holdout)] == holdout.column("diagnosis").to_pylist()
