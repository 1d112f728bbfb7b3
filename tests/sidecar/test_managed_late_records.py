"""Records that reach a managed sidecar's observer after the version that answered them was
released (the observer hub lagging behind, as on a slow log disk): the prediction log keeps
the arm they were answered as and their version's feature names, and the reports count them
as left out (``late``) instead of losing them. A real managed sidecar on a real control plane
(a real canary, rolled back), real ONNX models, the log read back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import hold_observer, raw_request, stub, until

from sidecar.predlog import PredictionLogSettings, read_logs

NAME = "fraud"


def _request(i: int, width: int = 8, **kw: Any) -> Any:
    x = np.random.default_rng(i).standard_normal((1, width)).astype(np.float32)
    request = raw_request(NAME, {"input": ("FP32", x)}, id=f"r{i}", **kw)
    request.parameters["routing_key"].string_param = f"key{i}"
    return request


def test_records_of_a_released_version_keep_their_arm_and_names_and_count_as_late(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = real_plane
    rng = np.random.default_rng(0)
    names = [f"a{j}" for j in range(8)]
    # Version 2's train dataset: the control plane builds its baseline, of features a0..a7.
    train = pa.table({n: rng.standard_normal(500) for n in names})
    plane.deploy({n: artifacts[n] for n in (1, 2)}, trains={2: train})
    plane.canary(2, 50.0)
    log_dir = tmp_path / "log"
    handle = real_managed(log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05))
    assert handle.wait_ready(60)
    assert handle.manager.version("2").feature_names == names
    observer = handle.observer
    # Hold the hub (as a slow disk would): every record below waits in it.
    release = hold_observer(observer, monkeypatch)
    try:
        s = stub(handle.port)
        served = Counter(s.ModelInfer(_request(i)).model_version for i in range(40))
        assert served["1"] > 0 and served["2"] > 0, served
        with pytest.raises(grpc.RpcError) as err:
            s.ModelInfer(_request(99, width=7, model_version="2"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Rolled back: the candidate leaves the table and is released while its records wait.
        generation = plane.client.rollback_rollout(NAME).generation
        manager = handle.manager
        until(lambda: manager.table.generation == generation and not manager.retiring)
        assert manager.version("2") is None
    finally:
        release.set()

    def champion_requests(reports: list[Any]) -> int:
        return sum(a.requests for r in reports for a in r.arms if a.arm == "champion")

    reports = plane.wait_reports(lambda rs: champion_requests(rs) >= served["1"])
    # Left out of the reports (the table no longer routes to that version), and counted so.
    late = served["2"] + 1
    until(lambda: observer.late >= late, timeout=10)
    reports = plane.reports  # read again: a late record counted wrongly would come after
    assert observer.late == late
    assert champion_requests(reports) == served["1"]
    assert not any(a.arm == "candidate" and a.requests for r in reports for a in r.arms)
    handle.stop(5)

    rows = read_logs(log_dir).to_pylist()
    by_version = Counter((r["model_version"], r["arm"]) for r in rows)
    # Each row under the arm that answered it, the refused request's included.
    assert by_version == {("1", "champion"): served["1"], ("2", "candidate"): served["2"] + 1}
    # The candidate's rows are named after its own baseline's features.
    answered = [r for r in rows if r["model_version"] == "2" and r["request_id"] != "r99"]
    assert answered and all(r["a0"] is not None for r in answered)
