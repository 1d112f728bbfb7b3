"""Load shedding in managed mode, as standalone: ModelInfer calls beyond ``--max-queue-rows``
waiting (in the batch queues of every version served and for a request thread) are refused at
once with RESOURCE_EXHAUSTED (``QUEUE_FULL``), while health checks, metadata and the admin
service keep answering on threads of their own. A real in-process managed sidecar on loopback,
following the control-plane double, serving a compute-heavy champion and candidate."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
from control_plane_double import FakeControlPlane, state
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar_helpers import answered_or_shed, raw_request, stub

from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"


def test_managed_sidecar_sheds_beyond_the_queue_limit_and_health_answers(
    managed: Any, plane: FakeControlPlane, tmp_path: Path
) -> None:
    artifacts = {
        n: onnx_models.save(onnx_models.heavy_mlp(seed=n), tmp_path / f"v{n}.onnx").read_bytes()
        for n in (1, 2)
    }
    handle = managed(max_batch_size=4, max_queue_rows=16, handler_threads=8, intra_op_threads=1)
    plane.push(state(NAME, 1, plane.versions(artifacts, 1, 2), champion=1, candidate=2, percent=50))
    assert handle.wait_ready(120)
    s = stub(handle.port)
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    s.ModelInfer(raw_request(NAME, {"input": ("FP32", x)}), timeout=30)

    answered: list[int] = []
    problems: list[str] = []
    flooding = threading.Event()
    done = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(handle.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            oip = stub(handle.port)
            admin = sidecar_pb2_grpc.SidecarAdminServiceStub(channel)
            flooding.wait(10)
            while not done.is_set():
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    ready = oip.ServerReady(pb.ServerReadyRequest(), timeout=2).ready
                    meta = oip.ModelMetadata(pb.ModelMetadataRequest(name=NAME), timeout=2)
                    admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(), timeout=2)
                except grpc.RpcError as exc:
                    problems.append(f"{exc.code().name}: {exc.details()}")
                    continue
                if status != health_pb2.HealthCheckResponse.SERVING or not ready:
                    problems.append(f"status {status}, ready {ready}")
                answered.append(len(meta.versions))
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    calls = []
    codes: dict[str, int] = {}
    try:
        for i in range(400):
            request = raw_request(NAME, {"input": ("FP32", x)})
            request.parameters["routing_key"].string_param = f"k{i}"
            calls.append(s.ModelInfer.future(request, timeout=60))
            flooding.set()
        for call in calls:
            code = answered_or_shed(call)
            codes[code] = codes.get(code, 0) + 1
    finally:
        done.set()
        prober.join(30)
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes
    assert codes.get("OK", 0) >= 8, codes
    assert answered and not problems, problems
    assert set(answered) == {2}
    # Still serving afterwards.
    s.ModelInfer(raw_request(NAME, {"input": ("FP32", x)}), timeout=30)
    # The window reports count the calls answered; the shed ones were routed to no arm.
    served = codes["OK"] + 2

    def reported(reports: list[Any]) -> int:
        return sum(a.requests for r in reports for a in r.arms)

    seen = plane.wait_reports(lambda rs: reported(rs) >= served, timeout=30)
    plane.wait_reports(lambda rs: len(rs) >= len(seen) + 4, timeout=30)
    assert reported(plane.reports) == served


def _version(label: str, queued: int | None) -> Any:
    from sidecar.model import ServingModel

    # A ServingModel with only its batch queue: queued_rows reads that.
    model = object.__new__(ServingModel)
    model.batcher = None if queued is None else SimpleNamespace(queued_rows=queued)  # type: ignore[assignment]
    return SimpleNamespace(label=label, model=model)


def test_admission_counts_the_batch_queues_of_every_loaded_version() -> None:
    from sidecar.managed.manager import DeploymentManager

    manager = DeploymentManager(loader=None, name=NAME)  # type: ignore[arg-type]
    assert manager.queued_rows() == 0
    manager.table = SimpleNamespace(  # type: ignore[assignment]
        queued_rows=lambda: 5,
    )
    manager.retiring = [_version("0", 3), _version("9", None)]  # type: ignore[list-item]
    assert manager.queued_rows() == 8

    from sidecar.managed.versions import RoutingTable

    table = SimpleNamespace(by_label={"1": _version("1", 4), "2": _version("2", 7)})
    # Champion and candidate (or shadow) both count; a version without batching has no queue.
    assert RoutingTable.queued_rows(table) == 11  # type: ignore[arg-type]
    table.by_label["3"] = _version("3", None)
    assert RoutingTable.queued_rows(table) == 11  # type: ignore[arg-type]


def test_health_answers_while_label_uploads_hold_every_admin_thread(
    managed: Any, plane: FakeControlPlane, tmp_path: Path
) -> None:
    """Label uploads that take long to store (a slow disk, held here) occupy the admin
    service's threads only: health, readiness and metadata answer meanwhile."""
    from sidecar.admission import ADMIN_THREADS, CONTROL_THREADS

    artifact = onnx_models.save(onnx_models.mlp(4), tmp_path / "v1.onnx").read_bytes()
    handle = managed()
    plane.push(state(NAME, 1, plane.versions({1: artifact}, 1), champion=1))
    assert handle.wait_ready(120)
    release = threading.Event()
    entered: list[int] = []
    ingest = handle.labels.ingest

    def slow_ingest(labels: Any) -> Any:
        entered.append(1)
        release.wait(60)
        return ingest(labels)

    handle.labels.ingest = slow_ingest
    with grpc.insecure_channel(handle.address) as channel:
        admin = sidecar_pb2_grpc.SidecarAdminServiceStub(channel)
        uploads = [
            admin.IngestLabels.future(sidecar_pb2.IngestLabelsRequest(), timeout=90)
            for _ in range(ADMIN_THREADS + CONTROL_THREADS)
        ]
        try:
            deadline = time.monotonic() + 30
            while len(entered) < ADMIN_THREADS and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(entered) == ADMIN_THREADS
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                got = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert got.status == health_pb2.HealthCheckResponse.SERVING
                assert stub(handle.port).ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        finally:
            release.set()
        for upload in uploads:
            upload.result()
    assert len(entered) == ADMIN_THREADS + CONTROL_THREADS
