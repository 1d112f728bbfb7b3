"""Reading the prediction log back from awkward places: files that cannot be read, folders
whose names are not UTF-8, files removed while being read, times beyond the calendar and
windows without records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sidecar.predlog.reader as reader
from modelplane.cli import main
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    compact,
    list_log_files,
    open_prediction_log,
    read_logs,
)

NOBODY = 65534


def _write(directory: Path | str, tag: str, rows: int = 2) -> None:
    """One sidecar run: one log file holding request ``tag`` with ``rows`` rows."""
    x = np.arange(2 * rows, dtype=np.float32).reshape(rows, 2)
    with open_prediction_log(PredictionLogSettings(dir=directory, durability="sync")) as writer:
        writer.append(PredictionBatch("m", "1", [tag], [rows], {"x": x})).result(10)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's own are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="predlog-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Run the body as a user without root's right to read every file."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_file_that_cannot_be_read_is_an_error_not_an_empty_log(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = shared_dir / "log"
    _write(log, "a")
    _write(log, "b")
    for folder in (log, *{p.parent for p in list_log_files(log)}):
        folder.chmod(0o755)
    locked = list_log_files(log)[1]
    locked.chmod(0o000)
    with _unprivileged():
        with pytest.raises(PermissionError):
            read_logs(log)
        with pytest.raises(PermissionError):
            compact(log, str(shared_dir / "parquet"))
        assert main(["logs", "read", str(log)]) == 2
        assert locked.name in capsys.readouterr().err
        assert main(["logs", "compact", str(log), "--out", str(shared_dir / "parquet")]) == 2
        assert locked.name in capsys.readouterr().err


def test_a_file_removed_by_retention_after_listing_is_skipped_and_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    _write(log, "expired", rows=3)
    _write(log, "kept", rows=2)
    listed = list_log_files(log)

    def list_then_expire(directory: Path, labels: bool = False) -> list[Path]:
        listed[0].unlink(missing_ok=True)  # retention runs just after the listing
        return list(listed)

    monkeypatch.setattr(reader, "list_log_files", list_then_expire)
    result = compact(log, str(tmp_path / "parquet"))
    assert (result.rows, result.source_files) == (2, 1)
    assert read_logs(log).column("request_id").to_pylist() == ["kept", "kept"]


def test_a_log_under_a_folder_name_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / os.fsdecode(b"log-\xff")
    _write(log, "a", rows=3)
    assert read_logs(log).column("row").to_pylist() == [0, 1, 2]
    assert compact(log, str(tmp_path / "parquet")).rows == 3
    assert main(["--output", "json", "logs", "read", str(log), "--columns", "request_id"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"request_id": "a"}] * 3


def test_relative_times_beyond_the_calendar_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    _write(log, "a")
    for since in ("-999999999999999999999999d", "-1e300s"):
        assert main(["logs", "read", str(log), f"--since={since}"]) == 2
        assert "is not a time" in capsys.readouterr().err


def test_a_window_without_records_still_has_the_logs_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    _write(log, "a")
    for window in (["--until", "2000-01-01"], ["--since", "2999-01-01"]):
        argv = ["logs", "read", str(log), *window, "--format", "csv", "--columns", "request_id,x_1"]
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == '"request_id","x_1"'
    empty = read_logs(log, until="2000-01-01")
    assert empty.num_rows == 0 and {"x_0", "x_1", "status_code"} <= set(empty.column_names)
    assert main(["logs", "read", str(log), "--until", "2000-01-01", "--columns", "nope"]) == 2
    assert "no column nope" in capsys.readouterr().err
