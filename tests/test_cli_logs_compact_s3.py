"""`modelplane logs compact DIR --out s3://...`: compaction to object storage through a
`pyarrow.fs` URI, against a real S3 endpoint (moto's server), read back from the bucket and
compared with the same compaction to a local folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from modelplane.cli import main
from sidecar.predlog import PredictionBatch, PredictionLogSettings, open_prediction_log
from tests.s3server import S3Server


def _rows(source: str, filesystem: pafs.FileSystem | None = None) -> list[dict]:
    table = ds.dataset(
        source, filesystem=filesystem, format="parquet", partitioning="hive"
    ).to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["request_id"], r["row"]))


def test_compact_to_a_bucket_equals_compact_to_a_folder(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open_prediction_log(PredictionLogSettings(dir=log, durability="sync")) as writer:
        for i, version in enumerate(["1", "2", "1"]):
            x = np.arange(6, dtype=np.float32).reshape(3, 2) + i
            out = {"p": np.full((3, 1), i / 10, np.float32)}
            writer.append(PredictionBatch("m", version, [f"r{i}"], [3], {"x": x}, out)).result(10)
    bucket = s3.new_bucket()
    assert main(["logs", "compact", str(log), "--out", s3.uri(bucket, "predictions")]) == 0
    assert main(["logs", "compact", str(log), "--out", str(tmp_path / "local")]) == 0
    in_bucket = _rows(f"{bucket}/predictions", s3.fs())
    assert len(in_bucket) == 9
    assert in_bucket == _rows(str(tmp_path / "local"))
    assert {r["model_version"] for r in in_bucket} == {1, 2}
    keys = s3.objects(bucket)
    assert keys and all(k.startswith(f"{bucket}/predictions/date=") for k in keys), keys
    # Compacting again neither duplicates nor loses rows.
    assert main(["logs", "compact", str(log), "--out", s3.uri(bucket, "predictions")]) == 0
    assert _rows(f"{bucket}/predictions", s3.fs()) == in_bucket
