"""``modelplane --output json drift report`` shows every field, false and zero ones too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.cli import main


def test_json_report_keeps_false_and_zero_fields(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table({n: rng.normal(size=2_000) for n in ("a", "b", "c")}), tmp_path / "train.parquet"
    )
    handle = sidecar_factory(model_dir / "id_fp32.onnx", baseline=tmp_path / "train.parquet")
    rows = rng.normal(size=(200, 3)).astype(np.float32)
    stub(handle.port).ModelInfer(raw_request("id_fp32", {"x": ("FP32", rows)}), timeout=30)
    address = f"127.0.0.1:{handle.port}"

    def report() -> dict[str, Any]:
        capsys.readouterr()
        assert main(["--output", "json", "drift", "report", "--sidecar", address]) == 0
        doc: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert doc["row_count"] == "200"
        return doc

    doc = wait_for(report)
    assert doc["drifted_share"] == 0.0
    assert [f["name"] for f in doc["features"]] == ["a", "b", "c"]
    for feat in doc["features"]:
        assert feat["drifted"] is False
        assert feat["kind"] == "FEATURE_KIND_NUMERIC" and feat["missing_share"] == 0.0
    assert "worker_pid" in doc and doc["window"] == "DRIFT_WINDOW_CURRENT"
