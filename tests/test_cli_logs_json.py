"""`--output json` stays strict JSON when a logged value is NaN or infinite (a sidecar accepts
non-finite inputs unless told not to): they are written as protobuf's JSON mapping writes
them, the strings "NaN", "Infinity" and "-Infinity"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_logged_values_are_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "log"
    x = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float32)
    with open_prediction_log(PredictionLogSettings(dir=directory)) as writer:
        writer.append(PredictionBatch("m", "1", ["r"], [2], {"x": x}, {"p": x / 2}))
    capsys.readouterr()
    assert main(["--output", "json", "logs", "read", str(directory), "--columns", "x_0,x_1"]) == 0
    records = _strict(capsys.readouterr().out)
    assert [(r["x_0"], r["x_1"]) for r in records] == [("NaN", 1.0), ("Infinity", "-Infinity")]
    out = tmp_path / "records.json"
    assert main(["logs", "read", str(directory), "--columns", "x_0,x_1", "--out", str(out)]) == 0
    assert _strict(out.read_text()) == records
