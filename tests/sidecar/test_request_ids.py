"""Which id-less requests are given an id: only those whose prediction something records
under its id (the prediction log, a managed sidecar's label index). Drift never reads ids,
so a sidecar with only a drift baseline answers an id-less request with an empty id (the
OIP answer echoes the request's ``id``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 rows of the MLP's 32 standard normal features and a label, as Parquet."""
    x = np.random.default_rng(3).standard_normal((3000, 32))
    columns = {f"f{i}": x[:, i] for i in range(32)}
    columns["label"] = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path_factory.mktemp("baseline") / "train.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_drift_alone_gives_no_id_and_still_counts(
    model_dir: Path, sidecar_factory: Any, baseline: Path, mode: str
) -> None:
    h = sidecar_factory(
        model_dir / "mlp.onnx", baseline=baseline, baseline_label="label", observer_mode=mode
    )
    x = np.random.default_rng(4).standard_normal((5, 32)).astype(np.float32)
    s = stub(h.port)
    for i in range(len(x)):
        reply = s.ModelInfer(raw_request("mlp", {"input": ("FP32", x[i : i + 1])}), timeout=30)
        assert reply.id == ""
    named = s.ModelInfer(raw_request("mlp", {"input": ("FP32", x[:1])}, id="mine"), timeout=30)
    assert named.id == "mine"
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{h.port}"))

    def counted() -> None:
        report = admin.GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(window=sidecar_pb2.DRIFT_WINDOW_CURRENT), timeout=10
        )
        assert report.row_count == len(x) + 1

    wait_for(counted)


@pytest.mark.parametrize(("index_rows", "logged"), [(0, False), (1000, False), (0, True)])
def test_a_managed_sidecar_gives_ids_only_to_index_or_log_them(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
    index_rows: int,
    logged: bool,
) -> None:
    from sidecar.predlog import PredictionLogSettings, read_logs

    log_dir = tmp_path / "log"
    real_plane.deploy({1: artifacts[1]})
    h = real_managed(
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05) if logged else None,
        label_index_rows=index_rows,
    )
    assert h.wait_ready(60)
    x = np.random.default_rng(5).standard_normal((1, 8)).astype(np.float32)
    reply = stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}), timeout=30)
    if not (index_rows or logged):
        assert reply.id == ""
        return
    assert reply.id

    def recorded() -> None:
        if index_rows:
            assert len(h.observer.index) == 1
        if logged:
            assert read_logs(log_dir).column("request_id").to_pylist() == [reply.id]

    wait_for(recorded)
