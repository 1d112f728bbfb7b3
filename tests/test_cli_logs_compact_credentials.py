"""`modelplane logs compact --out s3://KEY:SECRET@bucket/...`: pyarrow takes keys in the URI,
and neither the summary nor an error repeats them (CI logs keep what commands print)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sidecar.predlog as predlog
from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log, redact_uri
from tests.s3server import S3_ENV, S3Server

KEY, SECRET = S3_ENV["AWS_ACCESS_KEY_ID"], S3_ENV["AWS_SECRET_ACCESS_KEY"]


def _log(tmp_path: Path) -> Path:
    log = tmp_path / "log"
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        x = np.ones((2, 2), np.float32)
        writer.append(PredictionBatch("m", "1", ["r"], [2], {"x": x})).result(10)
    return log


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://AKIAEXAMPLE:hunter2@bkt/p?region=x", "s3://***@bkt/p?region=x"),
        ("s3://AKIAEXAMPLE@bkt/p", "s3://***@bkt/p"),
        ("s3://AKIA:wJal/K7MD+bP@xRf@bkt/p", "s3://***@bkt/p"),  # unescaped / and @
        ("s3://bkt/dir@v1/p", "s3://bkt/dir@v1/p"),
        ("/data/predictions", "/data/predictions"),
        ("error: 'gs://u:p@b/x' and 'file:///tmp/x'", "error: 'gs://***@b/x' and 'file:///tmp/x'"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_an_unusable_uri_is_named_without_its_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = "s3://AKIAEXAMPLE:hunter2@bkt/p?bogus=1"
    assert main(["logs", "compact", str(_log(tmp_path)), "--out", out]) == 2
    printed = capsys.readouterr()
    assert "hunter2" not in printed.err + printed.out and "AKIAEXAMPLE" not in printed.err
    assert "'s3://***@bkt/p?bogus=1' is not a path or filesystem URI" in printed.err


def test_an_os_error_is_worded_without_the_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(directory: str, out: str) -> None:
        raise OSError(f"cannot write {out}")

    monkeypatch.setattr(predlog, "compact", failing)
    out = "s3://AKIAEXAMPLE:hunter2@bkt/p"
    assert main(["logs", "compact", str(_log(tmp_path)), "--out", out]) == 2
    assert capsys.readouterr().err.strip() == "error: cannot write s3://***@bkt/p"


def test_the_summary_of_a_compaction_leaves_the_credentials_out(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    out = f"s3://{KEY}:{SECRET}@{bucket}/p?{s3.query}"
    log = _log(tmp_path)
    assert main(["--output", "json", "logs", "compact", str(log), "--out", out]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["out"] == f"s3://***@{bucket}/p?{s3.query}"
    assert main(["logs", "compact", str(log), "--out", out]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err and f"s3://***@{bucket}/p" in printed.out
    assert len(s3.objects(bucket)) == 1
