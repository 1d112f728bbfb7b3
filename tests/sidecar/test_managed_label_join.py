"""Which prediction a label joins on a real managed sidecar: only rows the coming reports
can carry are checked against their version, and the prediction a label is logged with is
the one it is counted for, even when its row is predicted again while the call runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import output_array, raw_request, stub, until

from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.predlog import list_log_files, read_file_batches

NAME = "fraud"


def _admin(h: Any) -> Any:
    return sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(h.address))


def _classes(h: Any, request_id: str, rows: int, seed: int) -> list[int]:
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    reply = stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id=request_id))
    return [int(v) for v in np.argmax(output_array(reply, 0, np.float32), axis=1)]


def _tally(plane: RealPlane, settle_windows: int = 3) -> tuple[int, int]:
    """(labeled, correct) over every report the control plane stored, once ``settle_windows``
    more windows were stored."""
    seen = len(plane.reports)
    reports = plane.wait_reports(lambda rs: len(rs) >= seen + settle_windows)
    arms = [a for r in reports for a in r.arms]
    return sum(a.labeled for a in arms), sum(a.correct for a in arms)


def test_labels_of_a_retired_classifier_are_not_checked_against_it(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    plane = real_plane
    plane.deploy({n: artifacts[n] for n in (1, 2)})
    h = real_managed()
    assert h.wait_ready(60)
    _classes(h, "r", 2, seed=0)
    until(lambda: len(h.observer.index) == 2)
    admin = _admin(h)
    # While version 1 is the champion, a fractional target for its row is refused.
    with pytest.raises(grpc.RpcError) as caught:
        admin.IngestLabels(
            sidecar_pb2.IngestLabelsRequest(
                labels=[sidecar_pb2.Label(request_id="r", row=0, target=0.5)]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Version 2 is promoted: version 1's rows join nothing, so nothing is checked against it.
    plane.canary(2, 50)
    promoted = plane.client.promote_rollout(NAME)
    until(lambda: h.manager.table.generation == promoted.generation, 60)
    assert h.manager.table.champion.number == 2
    reply = admin.IngestLabels(
        sidecar_pb2.IngestLabelsRequest(
            labels=[
                sidecar_pb2.Label(request_id="r", row=0, target=0.5),
                sidecar_pb2.Label(request_id="r", row=1, class_label=1),
            ]
        )
    )
    assert (reply.accepted, reply.matched) == (0, 0)
    assert _tally(plane) == (0, 0)


def test_a_row_predicted_again_while_labeled_is_counted_as_logged(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    from sidecar.predlog import PredictionLogSettings

    plane = real_plane
    plane.deploy({1: artifacts[1]})
    log_dir = tmp_path / "log"
    h = real_managed(log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05))
    assert h.wait_ready(60)
    predicted = _classes(h, "r", 1, seed=0)
    until(lambda: h.observer.index.get("r", 0) is not None)
    label_log = h.labels.log

    class PredictAgainFirst:
        """The label log, with the row predicted again just before the call's labels are
        written (as a client reusing the id would, at an unlucky moment)."""

        directory = label_log.directory

        def append(self, batch: pa.RecordBatch) -> None:
            before = h.observer.index.get("r", 0)
            _classes(h, "r", 1, seed=1)
            until(lambda: h.observer.index.get("r", 0) is not before)
            label_log.append(batch)

    h.labels.log = PredictAgainFirst()
    try:
        reply = _admin(h).IngestLabels(
            sidecar_pb2.IngestLabelsRequest(
                labels=[sidecar_pb2.Label(request_id="r", row=0, class_label=predicted[0])]
            )
        )
    finally:
        h.labels.log = label_log
    assert (reply.accepted, reply.matched) == (1, 1)
    (path,) = list_log_files(log_dir, labels=True)
    logged = pa.Table.from_batches(read_file_batches(path)).to_pylist()
    assert [(r["matched"], r["correct"]) for r in logged] == [(True, True)]
    assert _tally(plane) == (1, 1)  # counted as logged: once, right
