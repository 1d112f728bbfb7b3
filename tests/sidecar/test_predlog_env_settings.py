"""List settings given as env vars take the flags' ``A,B`` syntax: a real sidecar started
through the CLI with ``MODELPLANE_SIDECAR_FEATURE_NAMES`` and
``MODELPLANE_LOG_EXCLUDE_FEATURES``, its log read back with pyarrow."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from sidecar_helpers import raw_request, spawn_sidecar, stub

from sidecar.predlog import PredictionLogSettings, read_logs
from sidecar.settings import SidecarSettings

NAMES = [f"f{i}" for i in range(32)]


def test_env_lists_name_and_exclude_features_of_a_served_model(
    model_dir: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model_dir / "mlp.onnx"), "--listen", "127.0.0.1:0"),
            *("--device", "cpu", "--log-dir", str(log_dir), "--log-flush-interval", "20ms"),
        ],
        env={
            "MODELPLANE_SIDECAR_FEATURE_NAMES": ",".join(NAMES),
            "MODELPLANE_LOG_EXCLUDE_FEATURES": "f3, f7",
        },
    )
    x = np.random.default_rng(5).standard_normal((2, 32)).astype(np.float32)
    try:
        stub(ready["port"]).ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id="a"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    table = read_logs(log_dir).sort_by("row")
    assert "f3" not in table.column_names and "f7" not in table.column_names
    kept = [n for n in NAMES if n not in ("f3", "f7")]
    assert set(kept) <= set(table.column_names)
    logged = np.array([table.column(n).to_pylist() for n in kept], np.float32).T
    np.testing.assert_array_equal(logged, np.delete(x, [3, 7], axis=1))


@pytest.mark.parametrize("text", ["ssn,age", " ssn , age ", '["ssn", "age"]'])
def test_list_env_vars_read_a_b_and_json(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("MODELPLANE_LOG_EXCLUDE_FEATURES", text)
    monkeypatch.setenv("MODELPLANE_SIDECAR_FEATURE_NAMES", text)
    assert PredictionLogSettings().exclude_features == ("ssn", "age")
    assert SidecarSettings(model=Path("m.onnx")).feature_names == ("ssn", "age")
