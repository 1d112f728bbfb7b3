"""With ``--output json`` a command that writes its result to ``--out FILE`` still prints one
JSON document on stdout: the file written and what went into it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


def test_audit_export_to_a_file_prints_one_json_document(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(controlplane.address, capsys)
    cli.json("models", "create", unique())
    target = tmp_path / "audit.jsonl"
    code, out, err = cli.run("audit", "export", "--out", str(target), principal="auditor")
    assert code == 0, err
    lines = target.read_bytes().splitlines()
    assert json.loads(out) == {
        "path": str(target),
        "format": "jsonl",
        "events": len(lines),
        "bytes": target.stat().st_size,
    }
    assert len(lines) >= 1
    # In table mode the note stays on stderr and stdout is empty, as before.
    code, out, err = cli.run(
        "audit", "export", "--out", str(target), principal="auditor", output="table"
    )
    assert code == 0 and out == "" and "bytes to" in err


@pytest.mark.parametrize(
    ("fmt", "written"), [("csv", "csv"), ("parquet", "parquet"), ("table", "json")]
)
def test_logs_read_to_a_file_prints_one_json_document(
    fmt: str, written: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "log"
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
        writer.append(PredictionBatch("m", "1", ["r"], [2], {"x": x}, {"p": x / 2}))
    target = tmp_path / f"records.{written}"
    capsys.readouterr()
    argv = ["logs", "read", str(directory), "--format", fmt, "--out", str(target)]
    assert main(["--output", "json", *argv]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"path": str(target), "format": written, "records": 2}
    assert target.stat().st_size > 0
