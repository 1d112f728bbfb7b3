"""The numbers a model card prints, through a real control plane: significant digits rather
than a fixed four decimals, and no negative zero."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from controlplane.services.model_card_render import _num
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def test_model_card_numbers_keep_six_significant_digits(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """A regression whose error is ~1e-3 shows its r2 below 1 and its errors above 0."""
    model = onnx_models.save(onnx_models.mlp(4, (8,), 1, softmax=False), tmp_path / "reg.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4)).astype(np.float32)
    predicted = ort.InferenceSession(str(model)).run(None, {"input": x})[0][:, 0]
    y = predicted + rng.normal(0, 1e-3, 500)
    columns = {f"f{i}": x[:, i].astype(np.float64) for i in range(4)} | {"y": y}
    data = io.BytesIO()
    pq.write_table(pa.table(columns), data)
    with controlplane.client() as c:
        model_id = unique()
        c.create_model(model_id)
        c.register_version(
            model_id, model, capture_env=False, feature_names=[f"f{i}" for i in range(4)]
        )
        op = c.wait_operation(
            c.evaluate(model_id, 1, data.getvalue(), label="y", compare_to="").name, timeout=120
        )
        assert op.done and not op.HasField("error")
        metrics = json.loads(c.model_card(model_id, 1, format="json").content)["evaluation"][
            "metrics"
        ]
        md = c.model_card(model_id, 1, format="md").content
        html = c.model_card(model_id, 1, format="html").content
    assert 0.99999 < metrics["r2"] < 1
    assert f"| r2 | {metrics['r2']:.6g} | n/a |" in md
    assert "| r2 | 1.0000 |" not in md and "0.0000" not in md
    for name in ("mae", "rmse"):
        assert f"| {name} | {metrics[name]:.6g} | n/a |" in md
        assert 0 < float(f"{metrics[name]:.6g}") < 0.01
    assert f"<td>{metrics['r2']:.6g}</td>" in html


def test_model_card_numbers_show_no_negative_zero() -> None:
    assert _num(-0.0) == "0" and _num(0.0) == "0"
    assert _num(-2e-05) == "-2e-05" and _num(3e-07) == "3e-07"
    assert _num(0.9999987027772427) == "0.999999"
    assert _num(None) == "n/a" and _num(3) == "3"
