"""The retraining command of a wide model runs, through a real control plane (gRPC on loopback,
SQLite) and a real command from its hooks file: the drift event of a model with over a thousand
features is larger than Linux lets one environment string be (128 KiB), so it is on the
command's stdin only and ``MODELPLANE_DRIFT_EVENT`` is unset (the command never started: E2BIG);
a small event is in both."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from controlplane.rollouts.hooks import MAX_ENV_EVENT
from modelplane.profiles import BaselineProfile, NumericFeature
from modelplane.testing import onnx_models
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import arm, wait_for

pytestmark = pytest.mark.timeout(180)

#: Enough features, with names as long as real ones get, for an event past 128 KiB.
FEATURES = [f"customer_account_activity_feature_{i:05d}" for i in range(1200)]
ROWS = 300


def _register(c: Any, folder: Path) -> tuple[str, int, str, BaselineProfile]:
    """A model whose version has a baseline over :data:`FEATURES`."""
    model_id = unique()
    c.create_model(model_id)
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {n: rng.normal(0, 1, ROWS) for n in FEATURES}
    cols["target"] = rng.integers(0, 2, ROWS)
    data = folder / "train.parquet"
    pq.write_table(pa.table(cols), data)
    onnx = onnx_models.save(onnx_models.mlp(len(FEATURES), (4,)), folder / "wide.onnx")
    v = c.register_version(model_id, onnx, datasets={"train": data}, label="target")
    sha = v.baseline.sha256
    path = folder / "profile.json"
    c.download_blob(sha, path)
    return model_id, int(v.version), sha, BaselineProfile.from_dict(json.loads(path.read_bytes()))


def _shifted(version: int, profile: BaselineProfile, sha: str, names: list[str]) -> Any:
    """A champion window whose ``names`` features all moved by 3 standard deviations."""
    rng = np.random.default_rng(1)
    summary = pb.DriftSummary(baseline_sha256=sha, rows=ROWS)
    for name in names:
        feature = profile.feature(name)
        assert isinstance(feature, NumericFeature)
        values = rng.normal(3.0, 1, ROWS)
        counts = np.bincount(
            np.searchsorted(feature.edges, values, side="right"), minlength=len(feature.edges) + 1
        )
        summary.features.append(pb.FeatureCounts(name=name, counts=[int(x) for x in counts]))
    out = arm("champion", version, ROWS)
    out.drift.CopyFrom(summary)
    return out


def test_a_wide_models_drift_event_reaches_the_retraining_command(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    script = (
        "import json, os, pathlib, sys; "
        "event = sys.stdin.read(); "
        f"out = pathlib.Path({str(seen)!r}, json.loads(event)['deployment'].split('/')[-1]); "
        "part = out.with_suffix('.part'); "
        "env = os.environ.get('MODELPLANE_DRIFT_EVENT'); "
        "part.write_text(json.dumps({'stdin': event, 'env': env})); "
        # Renamed into place, so the test never reads a half-written file.
        "os.replace(part, out)"
    )
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(
        yaml.safe_dump(
            {
                "deployments": {
                    name: {"command": [sys.executable, "-c", script]} for name in ("wide", "narrow")
                }
            }
        )
    )
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", hooks_file=str(hooks))
    try:
        with cp.client() as c:
            model_id, version, sha, profile = _register(c, tmp_path)
            for name, features in (("wide", FEATURES), ("narrow", FEATURES[:4])):
                c.create_deployment(name, model=model_id, champion_version=version, max_psi=0.25)
                window = _shifted(version, profile, sha, features)
                assert c.report_window(name, replica="a", sequence=1, arms=[window]).accepted
                got = wait_for(
                    lambda n=name: (seen / n).exists() and json.loads((seen / n).read_text()),
                    f"the retraining command of {name}",
                )
                event = json.loads(got["stdin"])
                assert event["event"] == "drift" and event["deployment"] == f"deployments/{name}"
                assert [f["name"] for f in event["arms"][0]["features"]] == features
                if name == "wide":
                    assert len(got["stdin"].encode()) > 128 * 1024 > MAX_ENV_EVENT
                    assert got["env"] is None
                else:
                    assert json.loads(got["env"]) == event
    finally:
        cp.handle.stop(0)
