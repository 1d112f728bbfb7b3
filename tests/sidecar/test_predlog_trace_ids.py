"""Logged predictions carry the W3C trace id of their request in both durabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sidecar_helpers import raw_request, stub

from sidecar.predlog import PredictionLogSettings, read_logs

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _log(tmp_path: Path, durability: Any) -> PredictionLogSettings:
    return PredictionLogSettings(dir=tmp_path / "log", durability=durability, flush_interval=0.05)


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_logged_prediction_carries_its_trace_id(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: str
) -> None:
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx", log_settings=_log(tmp_path, durability), observer_mode="thread"
    )
    x = np.ones((1, 3), np.float32)
    stub(handle.port).ModelInfer(
        raw_request("id_fp32", {"x": ("FP32", x)}, id="traced"),
        metadata=[("traceparent", TRACEPARENT)],
        timeout=10,
    )
    handle.stop(5)
    table = read_logs(tmp_path / "log")
    assert table["trace_id"].to_pylist() == [TRACE_ID]
