"""A managed sidecar's ``async`` prediction log and a version whose feature names clash with a
log column (its baseline names a feature ``row``): the requests are answered, that version's
records are counted as log errors, and the records handed over with them (the shadow
version's, a rejected request's) are still written. A real managed sidecar on a real control
plane (a real shadow rollout; the baseline built from the version's train dataset), real ONNX
models, the log read back."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import hold_observer, raw_request, stub

from sidecar.managed.shadow import ShadowRecord
from sidecar.managed.versions import Served
from sidecar.observers import BatchRecord, RejectedRecord
from sidecar.predlog import PredictionLogSettings, read_logs

NAME = "fraud"


def _request(width: int = 8, seed: int = 0, **kw: Any) -> Any:
    x = np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)
    return raw_request(NAME, {"input": ("FP32", x)}, **kw)


def _buffered(hub: Any) -> Counter[str]:
    """Request ids waiting in the hub, by kind of record."""
    while True:
        try:
            records = [record for record, _size in hub._buffer]
            break
        except RuntimeError:  # appended to while copied
            continue
    ids: Counter[str] = Counter()
    for r in records:
        if isinstance(r, Served):
            r = r.record
        if isinstance(r, BatchRecord):
            ids["served"] += len(r.request_ids)
        elif isinstance(r, RejectedRecord):
            ids["rejected"] += 1
        elif isinstance(r, ShadowRecord) and r.record is not None:
            ids["shadow"] += len(r.record.request_ids)
    return ids


def test_a_run_the_log_cannot_take_is_counted_and_the_rest_of_its_dispatch_is_written(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = real_plane
    rng = np.random.default_rng(0)
    names = ["f0", "row", *(f"f{j}" for j in range(2, 8))]
    columns = {n: rng.standard_normal(500) for n in names}
    plane.deploy({n: artifacts[n] for n in (1, 2)}, trains={1: pa.table(columns)})
    plane.shadow(2, 1.0)
    log_dir = tmp_path / "log"
    handle = real_managed(log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05))
    assert handle.wait_ready(60)
    observer = handle.observer
    assert observer.writer is not None
    assert handle.manager.version("1").feature_names == names
    # Hold the hub on its next wake-up, so that everything below reaches the observer in
    # one dispatch: the champion's run (whose columns clash) comes before the shadow's run
    # and the rejected request.
    release = hold_observer(observer, monkeypatch)
    s = stub(handle.port)
    answered = [s.ModelInfer(_request(seed=i, id=f"ok{i}")).model_version for i in range(8)]
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(_request(width=7, id="bad"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    hub = handle.manager.loader.hub
    want = Counter(served=8, shadow=8, rejected=1)
    deadline = time.monotonic() + 30
    while _buffered(hub) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _buffered(hub) == want
    release.set()
    deadline = time.monotonic() + 30
    while observer.refused < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    handle.stop(5)
    assert answered == ["1"] * 8
    table = read_logs(log_dir)
    logged = {
        (r["arm"], r["model_version"], r["request_id"])
        for r in table.select(["arm", "model_version", "request_id"]).to_pylist()
    }
    assert logged == {("shadow", "2", f"ok{i}") for i in range(8)} | {("champion", "1", "bad")}
    assert observer.refused == 8
    errors = observer.writer.metrics.registry.get_sample_value(
        "modelplane_prediction_log_errors_total"
    )
    assert errors == 1
