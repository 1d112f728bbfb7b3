"""Times in the CLI's JSON are written one way: as protobuf's JSON mapping writes a Timestamp
(RFC 3339 in UTC with ``T`` and ``Z``, with 0, 3, 6 or 9 fractional digits), the records of
``logs read`` as much as the resources the control plane sends."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from modelplane.cli import main
from modelplane.cli._output import dumps
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def _protobuf(value: datetime) -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp.ToJsonString()


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (datetime(2026, 11, 29, 6, 27, 7, 490000, tzinfo=UTC), "2026-11-29T06:27:07.490Z"),
        (datetime(2026, 11, 29, 6, 23, 17, 327145, tzinfo=UTC), "2026-11-29T06:23:17.327145Z"),
        (datetime(2026, 11, 29, 6, 23, 17, tzinfo=UTC), "2026-11-29T06:23:17Z"),
        (datetime(2026, 11, 29, 6, 23, 17, 5000), "2026-11-29T06:23:17.005Z"),  # naive: UTC
    ],
)
def test_a_datetime_is_written_as_a_timestamp(value: datetime, written: str) -> None:
    assert json.loads(dumps({"t": value})) == {"t": written} and written == _protobuf(value)


def test_logs_read_writes_record_times_as_every_json_document_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "predictions"
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    with open_prediction_log(PredictionLogSettings(dir=logs, durability="sync")) as writer:
        writer.append(PredictionBatch("m", "1", ["r1"], [2], {"x": x})).result(10)

    from sidecar.predlog import read_logs

    stamps = [_protobuf(t) for t in read_logs(logs).column("timestamp").to_pylist()]
    assert main(["--output", "json", "logs", "read", str(logs)]) == 0
    on_stdout = json.loads(capsys.readouterr().out)
    out = tmp_path / "records.json"
    assert main(["--output", "json", "logs", "read", str(logs), "--out", str(out)]) == 0
    for records in (on_stdout, json.loads(out.read_text())):
        written = [r["timestamp"] for r in records]
        assert written == stamps and all(RFC3339.match(t) for t in written), written
