"""`read_logs(failed=True)` and `modelplane logs read DIR --failed`: only records whose
status_code is not OK, filtered while the log is read, so that --arm, --since and --limit
(which counts the records kept) compose with it. Logs written by the real writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from modelplane.cli import main
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    open_prediction_log,
    read_logs,
)

#: Arrival times of the records, one minute apart from 10:00 (request ids say which).
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC).timestamp()


def _at(minute: int) -> float:
    return T0 + 60 * minute


def _x(rows: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(2 * rows, dtype=np.float32)).reshape(rows, 2)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Two sidecar runs (two files): champion and shadow answers, some of them failed."""
    log = tmp_path / "log"
    settings = PredictionLogSettings(dir=log, durability="sync")
    with open_prediction_log(settings) as writer:
        # One session call: ok-0 answered, boom-1 failed by the model.
        writer.append(
            PredictionBatch(
                "m",
                "1",
                ["ok-0", "boom-1"],
                [2, 1],
                {"x": _x(3)},
                {"y": np.array([0.1, 0.2, 0.3], np.float32)},
                timestamps=[_at(0), _at(1)],
                status_codes=["OK", "INTERNAL"],
                status_reasons=[None, "MODEL_EXECUTION_FAILED"],
            )
        ).result(10)
        writer.append(
            PredictionBatch(
                "m", "2", ["shadow-ok-2"], [1], {"x": _x(1)}, arm="shadow", timestamps=_at(2)
            )
        ).result(10)
        writer.append_rejected(
            RejectedRequest(
                "shadow-bad-3",
                "INTERNAL",
                "MODEL_EXECUTION_FAILED",
                "the candidate failed",
                "m",
                "2",
                arm="shadow",
                inputs={"x": _x(2, start=100)},
                timestamp=_at(3),
            )
        ).result(10)
    with open_prediction_log(settings) as writer:
        writer.append_rejected(
            RejectedRequest(
                "refused-4",
                "INVALID_ARGUMENT",
                "BAD_INPUT",
                "x is no tensor",
                "m",
                "1",
                timestamp=_at(4),
            )
        ).result(10)
        writer.append_rejected(
            RejectedRequest(
                "shadow-shed-5",
                "RESOURCE_EXHAUSTED",
                "QUEUE_FULL",
                model_name="m",
                model_version="2",
                arm="shadow",
                timestamp=_at(5),
            )
        ).result(10)
        writer.append(
            PredictionBatch("m", "1", ["ok-6"], [1], {"x": _x(1)}, timestamps=_at(6))
        ).result(10)
    return log


def _ids(table: object) -> list[str]:
    return table.column("request_id").to_pylist()  # type: ignore[attr-defined,no-any-return]


def test_read_logs_keeps_only_records_that_are_not_ok(log_dir: Path) -> None:
    table = read_logs(log_dir, failed=True)
    assert _ids(table) == ["boom-1", "shadow-bad-3", "shadow-bad-3", "refused-4", "shadow-shed-5"]
    assert "OK" not in table.column("status_code").to_pylist()
    # The failed shadow copy keeps the features that decoded: which inputs broke it.
    bad = table.filter(np.array(_ids(table)) == "shadow-bad-3")
    assert bad.column("x_0").to_pylist() == [100.0, 102.0]
    assert bad.column("status_reason").to_pylist() == ["MODEL_EXECUTION_FAILED"] * 2
    # Without it, every record.
    assert len(_ids(read_logs(log_dir))) == 9
    assert len(_ids(read_logs(log_dir, failed=False))) == 9


def test_failed_composes_with_arm_since_and_a_limit_counting_records_kept(log_dir: Path) -> None:
    shadow = read_logs(log_dir, arm="shadow", failed=True)
    assert _ids(shadow) == ["shadow-bad-3", "shadow-bad-3", "shadow-shed-5"]
    assert _ids(read_logs(log_dir, since="2026-11-26T10:02:00Z", failed=True)) == [
        "shadow-bad-3",
        "shadow-bad-3",
        "refused-4",
        "shadow-shed-5",
    ]
    # The limit counts failed records: the two OK records before boom-1 do not use it up,
    # and it reaches across files.
    assert _ids(read_logs(log_dir, failed=True, limit=1)) == ["boom-1"]
    assert _ids(read_logs(log_dir, failed=True, limit=4)) == [
        "boom-1",
        "shadow-bad-3",
        "shadow-bad-3",
        "refused-4",
    ]
    assert _ids(read_logs(log_dir, arm="shadow", failed=True, limit=2)) == ["shadow-bad-3"] * 2
    assert _ids(read_logs(log_dir, failed=True, limit=0)) == []


def test_no_failed_record_is_an_empty_table_with_the_logs_columns(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        writer.append(PredictionBatch("m", "1", ["ok"], [2], {"x": _x(2)})).result(10)
    empty = read_logs(log, failed=True)
    assert empty.num_rows == 0
    assert {"x_0", "x_1", "status_code"} <= set(empty.column_names)


@pytest.mark.parametrize("wrong", ["false", "yes", 0, 1, None])
def test_failed_must_be_true_or_false(log_dir: Path, wrong: object) -> None:
    with pytest.raises(TypeError, match="failed must be True or False"):
        read_logs(log_dir, failed=wrong)  # type: ignore[arg-type]


def _cli_ids(capsys: pytest.CaptureFixture[str], log_dir: Path, *argv: str) -> list[str]:
    assert main(["--output", "json", "logs", "read", str(log_dir), *argv]) == 0
    return [r["request_id"] for r in json.loads(capsys.readouterr().out)]


def test_cli_failed_with_arm_since_and_limit(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli_ids(capsys, log_dir, "--failed") == [
        "boom-1",
        "shadow-bad-3",
        "shadow-bad-3",
        "refused-4",
        "shadow-shed-5",
    ]
    assert _cli_ids(capsys, log_dir, "--failed", "--arm", "shadow", "--limit", "2") == [
        "shadow-bad-3",
        "shadow-bad-3",
    ]
    assert _cli_ids(capsys, log_dir, "--failed", "--since", "2026-11-26T10:04:00Z") == [
        "refused-4",
        "shadow-shed-5",
    ]
    assert _cli_ids(capsys, log_dir, "--failed", "--arm", "champion", "--limit", "1") == ["boom-1"]
    assert len(_cli_ids(capsys, log_dir)) == 9


def test_cli_failed_in_a_table_and_as_csv(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["logs", "read", str(log_dir), "--failed", "--arm", "shadow"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 prediction records" in out and "QUEUE_FULL" in out and "ok-" not in out
    assert main([*argv, "--format", "csv", "--columns", "request_id,status_code"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0] == '"request_id","status_code"'
    assert lines[1:] == [
        '"shadow-bad-3","INTERNAL"',
        '"shadow-bad-3","INTERNAL"',
        '"shadow-shed-5","RESOURCE_EXHAUSTED"',
    ]


def test_cli_failed_takes_no_value(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "read", str(log_dir), "--failed=yes"]) == 2
    assert "--failed" in capsys.readouterr().err
