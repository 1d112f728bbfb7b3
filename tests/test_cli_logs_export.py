"""`modelplane logs read --format csv|parquet --out`: every log the writer makes can be
exported, and --out appears only once complete."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import modelplane.cli.logs as cli_logs
from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log

REPO = Path(__file__).resolve().parents[1]
#: Two rows of two features.
X2 = np.arange(4, dtype=np.float32).reshape(2, 2)

# The CLI with a file size limit: writing past it fails with EFBIG (Python ignores SIGXFSZ).
LIMITED_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from modelplane.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _write(directory: Path, *batches: PredictionBatch) -> Path:
    with open_prediction_log(PredictionLogSettings(dir=directory, durability="sync")) as writer:
        for batch in batches:
            writer.append(batch).result(10)
    return directory


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_of_an_output_whose_width_changed_between_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.ones((1, 2), np.float32)
    log = _write(
        tmp_path / "log",
        PredictionBatch("m", "1", ["a"], [1], {"x": x}, {"p": np.array([[0.5, 1.5]], np.float32)}),
        PredictionBatch("m", "2", ["b"], [1], {"x": x}, {"p": np.array([[1, 2, 3]], np.float32)}),
    )
    out = tmp_path / "records.csv"
    argv = ["logs", "read", str(log), "--format", "csv", "--columns", "request_id,out_p"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = _csv(out.read_text())
    assert [list(r.values()) for r in rows] == [["a", "0.5", "1.5", ""], ["b", "1", "2", "3"]]
    assert list(rows[0]) == ["request_id", "out_p[0]", "out_p[1]", "out_p[2]"]
    assert main(argv) == 0
    assert _csv(capsys.readouterr().out) == rows


def test_csv_of_bytes_inputs_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = np.array([b"ok", b"\xff\xfe", None], dtype=object)
    log = _write(
        tmp_path / "log",
        PredictionBatch("m", "1", ["a"], [3], {"s": text, "x": np.ones((3, 2), np.float32)}),
    )
    assert main(["logs", "read", str(log), "--format", "csv", "--columns", "row,s"]) == 0
    assert [(r["row"], r["s"]) for r in _csv(capsys.readouterr().out)] == [
        ("0", "6f6b"),
        ("1", "fffe"),
        ("2", ""),
    ]


def test_records_arrow_cannot_write_are_a_usage_error_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.ones((1, 2), np.float32)
    log = _write(
        tmp_path / "log",
        PredictionBatch("m", "1", ["a"], [1], {"x": x}, {"p": np.ones((1, 2), np.float32)}),
        PredictionBatch("m", "2", ["b"], [1], {"x": x}, {"p": np.ones((1, 3), np.float32)}),
    )
    monkeypatch.setattr(cli_logs, "for_csv", lambda table: table)  # list columns reach Arrow
    out = tmp_path / "records.csv"
    assert main(["logs", "read", str(log), "--format", "csv", "--out", str(out)]) == 2
    assert "cannot write these records as csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "log"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "table"])
def test_a_failed_write_leaves_an_earlier_out_file_as_it_was(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    log = _write(
        tmp_path / "log",
        PredictionBatch("m", "1", ["a"], [500], {"x": rng.random((500, 8), dtype=np.float32)}),
    )
    out = tmp_path / "export" / "records.out"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export\n")
    argv = ["logs", "read", str(log), "--format", fmt, "--out", str(out)]
    child = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 2, child.stderr
    assert "too large" in child.stderr
    assert out.read_bytes() == b"an earlier export\n"
    assert list(out.parent.iterdir()) == [out]

    assert main(argv) == 0
    if fmt == "parquet":
        assert pq.read_table(out).num_rows == 500
    assert list(out.parent.iterdir()) == [out]


def test_out_dev_stdout_writes_into_the_pipe_or_redirect_as_it_is(tmp_path: Path) -> None:
    log = _write(tmp_path / "log", PredictionBatch("m", "1", ["a", "b"], [1, 1], {"x": X2}))
    cli = [sys.executable, "-m", "modelplane.cli", "logs", "read", str(log), "--format", "csv"]
    piped = subprocess.run(
        [*cli, "--out", "/dev/stdout"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert [row["request_id"] for row in _csv(piped.stdout)] == ["a", "b"]
    # A shell redirect shared with other writers keeps what they wrote around the export.
    combined = tmp_path / "combined.csv"
    script = f"echo header; {' '.join(cli)} --out /dev/stdout; echo trailer"
    shell = subprocess.run(
        ["bash", "-c", f"{{ {script}; }} > {combined}"], cwd=REPO, timeout=60, text=True
    )
    assert shell.returncode == 0
    lines = combined.read_text().splitlines()
    assert lines[0] == "header" and lines[-1] == "trailer" and len(lines) == 2 + 1 + 2


def test_out_through_a_symlink_replaces_its_file_and_keeps_permissions(tmp_path: Path) -> None:
    log = _write(tmp_path / "log", PredictionBatch("m", "1", ["a"], [1], {"x": X2[:1]}))
    real = tmp_path / "exports" / "latest.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    assert main(["logs", "read", str(log), "--format", "csv", "--out", str(link)]) == 0
    assert link.is_symlink()
    assert [row["request_id"] for row in _csv(real.read_text())] == ["a"]
    assert (real.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["latest.csv"]
