"""Drift responses through a real control plane: merged drift crossing the thresholds records
an audited drift event and calls the retraining hooks, a real webhook (a local HTTP server)
and a real command from the hooks file, without ever delaying the window report."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.profiles import BaselineProfile, NumericFeature
from modelplane.testing import onnx_models
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import arm, wait_for

FEATURES = [f"x{i}" for i in range(8)]


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    httpd = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/retrain"
    httpd.shutdown()


def _train(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {n: rng.normal(0, 1, 2000) for n in FEATURES}
    cols["target"] = rng.integers(0, 2, 2000)
    path = folder / "train.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def _with_baseline(c: Client, folder: Path) -> tuple[str, int, BaselineProfile]:
    model_id = unique()
    c.create_model(model_id)
    onnx = onnx_models.save(onnx_models.mlp(8, (8,)), folder / "m.onnx")
    v = c.register_version(model_id, onnx, datasets={"train": _train(folder)}, label="target")
    sha = v.baseline.sha256
    path = folder / "profile.json"
    c.download_blob(sha, path)
    return model_id, int(v.version), BaselineProfile.from_dict(json.loads(path.read_bytes()))


def _drift_arm(version: int, profile: BaselineProfile, sha: str, shift: float, rows: int) -> Any:
    rng = np.random.default_rng(1)
    summary = pb.DriftSummary(baseline_sha256=sha, rows=rows)
    for name in FEATURES:
        feature = profile.feature(name)
        assert isinstance(feature, NumericFeature)
        values = rng.normal(shift, 1, rows)
        counts = np.bincount(
            np.searchsorted(feature.edges, values, side="right"), minlength=len(feature.edges) + 1
        )
        summary.features.append(pb.FeatureCounts(name=name, counts=[int(x) for x in counts]))
    out = arm("champion", version, rows)
    out.drift.CopyFrom(summary)
    return out


def test_drift_calls_webhook_and_command(tmp_path: Path, webhook: str) -> None:
    marker = tmp_path / "retrain.json"
    script = (
        "import os, pathlib, sys; "
        f"pathlib.Path({str(marker)!r}).write_text(sys.stdin.read() + '\\n' + "
        "os.environ['MODELPLANE_DRIFT_EVENT'])"
    )
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(
        yaml.safe_dump({"deployments": {"churn": {"command": [sys.executable, "-c", script]}}})
    )
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", hooks_file=str(hooks))
    try:
        with cp.client() as c:
            model_id, version, profile = _with_baseline(c, tmp_path)
            sha = c.get_version(model_id, version).baseline.sha256
            d = c.create_deployment(
                "churn",
                model=model_id,
                champion_version=version,
                max_psi=0.25,
                min_rows=300,
                webhook_url=webhook,
            )
            assert d.retraining_hook.command_configured
            calm = _drift_arm(version, profile, sha, 0.0, 500)
            c.report_window("churn", replica="a", sequence=1, arms=[calm])
            assert not Hook.received and not marker.exists()
            assert [e.action for e in c.list_rollout_events("churn")] == []
            # Two replicas, each below min_rows alone; merged they cross.
            shifted = _drift_arm(version, profile, sha, 1.5, 200)
            c.report_window("churn", replica="a", sequence=2, arms=[shifted])
            assert not Hook.received
            c.report_window("churn", replica="b", sequence=1, arms=[shifted])
            event = wait_for(lambda: Hook.received and Hook.received[0], "the webhook")
            assert event["event"] == "drift" and event["deployment"] == "deployments/churn"
            part = event["arms"][0]
            assert part["arm"] == "champion" and part["version"] == version
            assert part["rows"] == 400 and part["max_psi"] > 0.25
            assert {f["name"] for f in part["features"]} == set(FEATURES)
            text = wait_for(lambda: marker.exists() and marker.read_text(), "the command")
            stdin, env = text.split("\n", 1)
            assert json.loads(stdin) == json.loads(env) == event
            events = list(c.list_rollout_events("churn"))
            assert [e.action for e in events] == ["drift"] and events[0].actor == "modelplane"
            assert "max_psi" in events[0].reason
            audit = [e.action for e in c.audit_events(resource="deployments/churn")]
            assert audit == ["CreateDeployment", "DriftDetected"]
            # Within the cooldown, no second event.
            c.report_window("churn", replica="b", sequence=2, arms=[shifted])
            assert len(list(c.list_rollout_events("churn"))) == 1
            # Counts that do not fit the baseline's bins are refused.
            bad = _drift_arm(version, profile, sha, 0.0, 10)
            del bad.drift.features[0].counts[-1]
            with pytest.raises(InvalidArgument) as err:
                c.report_window("churn", replica="c", sequence=1, arms=[bad])
            assert err.value.reason == "HISTOGRAM_LAYOUT_MISMATCH"
            other = _drift_arm(version, profile, "0" * 64, 0.0, 10)
            with pytest.raises(InvalidArgument) as err:
                c.report_window("churn", replica="c", sequence=1, arms=[other])
            assert err.value.reason == "BASELINE_MISMATCH"
    finally:
        cp.handle.stop(0)


def test_bad_hooks_file_refuses_to_start(tmp_path: Path) -> None:
    from controlplane.rollouts.hooks import HooksFileError

    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(yaml.safe_dump({"deployments": {"churn": {"command": "rm -rf /"}}}))
    with pytest.raises(HooksFileError, match="list of strings"):
        start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", hooks_file=str(hooks))
