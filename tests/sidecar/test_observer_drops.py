"""A lossy observer hub (drift without a prediction log) drops records when its observers fall
behind; every drop is counted in ``modelplane_observer_dropped_records_total``."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import raw_request, stub

import sidecar.server as server_module
from sidecar.observers import ObserverHub

CAPACITY = 4


def _dropped(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        s.labels["model"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelplane_observer_dropped_records_total"
    }


def test_records_a_lossy_hub_drops_are_counted(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(2).standard_normal((500, 32))
    baseline = tmp_path / "train.parquet"
    pq.write_table(pa.table({f"x_{i}": x[:, i] for i in range(32)}), baseline)
    release = threading.Event()

    class StalledHub(ObserverHub):
        """A small buffer whose dispatcher waits, as observers far behind would."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, capacity=CAPACITY, **kwargs)

        def _run(self) -> None:
            release.wait(60)
            super()._run()

    monkeypatch.setattr(server_module, "ObserverHub", StalledHub)
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        baseline=baseline,
        observer_mode="thread",
        metrics_listen="127.0.0.1:0",
        max_batch_size=1,
    )
    try:
        assert _dropped(handle.metrics_port) == {"mlp": 0.0}
        s = stub(handle.port)
        sent = 20
        for _ in range(sent):  # one record per request: batching is off
            s.ModelInfer(
                raw_request("mlp", {"input": ("FP32", np.ones((1, 32), np.float32))}), timeout=10
            )
        assert _dropped(handle.metrics_port) == {"mlp": float(sent - CAPACITY)}
    finally:
        release.set()
