"""``modelplane labels send`` checks every cell before anything is sent: a value a class or a row
cannot hold (outside int64), an empty request id and an empty or null label are usage errors
(exit 2) naming the file's line or row and the column, and nothing reaches the sidecar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, stub

from modelplane.cli import main

NAME = "fraud"


@pytest.fixture
def replica(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> Any:
    """A managed sidecar that answered one row under the id ``r1``."""
    real_plane.deploy({1: artifacts[1]})
    h = real_managed()
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id="r1"))
    deadline = time.monotonic() + 10
    while len(h.observer.index) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return h


def _send(capsys: pytest.CaptureFixture[str], path: Path, address: str, *extra: str) -> Any:
    """Run ``labels send`` with JSON output: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--output", "json", "labels", "send", str(path), "--sidecar", address, *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


def _sent(out: str) -> dict[str, Any]:
    (result,) = json.loads(out)["sidecars"]
    return dict(result)


def test_values_outside_int64_are_usage_errors_naming_the_cell(
    replica: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = replica.address
    # A Parquet uint64 class beyond int64.
    u64 = tmp_path / "u64.parquet"
    table = {"request_id": ["r1", "r2"], "label": pa.array([1, 2**63 + 5], pa.uint64())}
    pq.write_table(pa.table(table), u64)
    code, out, err = _send(capsys, u64, address)
    assert (code, out) == (2, ""), err
    assert f"{u64}, row 1, column label: label 9223372036854775813 is out of range" in err
    # Sent as targets, it is a number like any other.
    code, out, err = _send(capsys, u64, address, "--kind", "target")
    assert code == 0, err
    assert _sent(out)["delivered"] == 2

    # A float sent as a class.
    hugef = tmp_path / "hugef.csv"
    hugef.write_text("request_id,label\nr1,1\nr2,1e20\n")
    code, _, err = _send(capsys, hugef, address, "--kind", "class")
    assert code == 2, err
    assert f"{hugef}, line 3, column label: label 1e+20 is out of range for a class" in err

    # A row beyond int64, in a CSV and in a Parquet file.
    hugerow = tmp_path / "hugerow.csv"
    hugerow.write_text("request_id,row,label\nr1,0,1\nr2,1e30,1\n")
    code, _, err = _send(capsys, hugerow, address)
    assert code == 2, err
    assert f"{hugerow}, line 3: row 1e+30 is out of range" in err
    rowpq = tmp_path / "row.parquet"
    rows = pa.array([0, 2**63], pa.uint64())
    pq.write_table(pa.table({"request_id": ["r1", "r2"], "row": rows, "label": [1, 1]}), rowpq)
    code, _, err = _send(capsys, rowpq, address)
    assert code == 2, err
    assert f"{rowpq}, row 1: row 9223372036854775808 is out of range" in err


def test_a_csv_column_of_whole_numbers_beyond_int64_is_not_sent_as_targets(
    replica: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyarrow reads a CSV column of whole numbers as floats when one is too large for int64:
    by default such a column is classes, refused (exit 2); ``--kind target`` sends it as
    targets, and a column with a number written as a float stays targets."""
    address = replica.address
    huge = tmp_path / "huge.csv"
    huge.write_text("request_id,label\nr1,1\nr2,99999999999999999999\n")
    code, _, err = _send(capsys, huge, address)
    assert code == 2, err
    assert f"{huge}, line 3, column label: label 99999999999999999999 is out of range" in err
    assert "--kind target" in err
    code, out, err = _send(capsys, huge, address, "--kind", "target")
    assert code == 0, err
    assert _sent(out)["delivered"] == 2

    floats = tmp_path / "floats.csv"
    floats.write_text("request_id,label\nr1,1\nr2,1e20\n")
    code, out, err = _send(capsys, floats, address)
    assert code == 0, err
    assert (_sent(out)["outcome"], _sent(out)["matched"]) == ("done", 1)


def test_empty_request_ids_and_labels_are_usage_errors_naming_the_line(
    replica: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = replica.address
    empty_id = tmp_path / "empty-id.csv"
    empty_id.write_text("request_id,row,label\nr1,0,1\nr2,0,1\nr3,0,0\n,0,1\n")
    code, out, err = _send(capsys, empty_id, address)
    assert (code, out) == (2, ""), err
    assert f"{empty_id}, line 5: the request_id cell is empty" in err
    nulls = tmp_path / "null-id.parquet"
    pq.write_table(pa.table({"request_id": ["r1", None], "label": [1, 0]}), nulls)
    code, _, err = _send(capsys, nulls, address)
    assert code == 2, err
    assert f"{nulls}, row 1: the request_id cell is empty" in err

    # Cells pyarrow reads as missing: a label file with holes is refused, not skipped.
    for cell in ("", "NaN", "N/A", "NULL"):
        holes = tmp_path / "holes.csv"
        holes.write_text(f"request_id,label\nr1,1\nr2,{cell}\nr3,0\n")
        code, out, err = _send(capsys, holes, address)
        assert (code, out) == (2, ""), (cell, err)
        assert f"{holes}, line 3, column label: the label cell is empty" in err
    for kind in ("class", "target"):
        code, _, err = _send(capsys, holes, address, "--kind", kind)
        assert code == 2, err
    # A NaN target in a Parquet file is no label either.
    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"request_id": ["r1", "r2"], "label": [0.5, float("nan")]}), nan)
    code, _, err = _send(capsys, nan, address)
    assert code == 2, err
    assert f"{nan}, row 1, column label: label nan is not a finite number" in err

    # The same file without its holes is sent.
    holes.write_text("request_id,label\nr1,1\nr3,0\n")
    code, out, err = _send(capsys, holes, address)
    assert code == 0, err
    assert (_sent(out)["delivered"], _sent(out)["matched"]) == (2, 1)


def test_a_csv_with_line_breaks_in_quoted_cells_is_read_whole(
    replica: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid CSV over about 1 MiB whose quoted cells span lines: before, pyarrow's reader
    lost track of rows across its blocks and the file was refused."""
    import csv

    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["request_id", "row", "label", "note"])
        out.writerow(["r1", 0, 1, "first"])
        for i in range(12_000):
            out.writerow([f"other-{i}", 0, i % 2, f"seen by\n{'x' * 80}\nanalyst {i}"])
    assert path.stat().st_size > 1024 * 1024
    code, out_text, err = _send(capsys, path, replica.address)
    assert code == 0, err
    assert (_sent(out_text)["delivered"], _sent(out_text)["matched"]) == (12_001, 1)
