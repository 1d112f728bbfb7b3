"""A managed sidecar counts each predicted row's label once: a retried IngestLabels, a second
label for the same row, or the same row twice in one call add nothing to labeled/correct."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import output_array, raw_request, stub

from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"


@pytest.fixture
def handle(real_plane: RealPlane, artifacts: dict, real_managed: Any) -> Any:  # noqa: F811
    real_plane.deploy({1: artifacts[1]})
    h = real_managed()
    assert h.wait_ready(60)
    return h


def _predict(h: Any, request_id: str, rows: int, seed: int) -> list[int]:
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    reply = stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id=request_id))
    return [int(v) for v in np.argmax(output_array(reply, 0, np.float32), axis=1)]


def _tally(plane: RealPlane, h: Any, settle_windows: int = 3) -> tuple[int, int]:
    """(labeled, correct) over every report the control plane stored, once ``settle_windows``
    more windows were stored."""
    seen = len(plane.reports)
    reports = plane.wait_reports(lambda rs: len(rs) >= seen + settle_windows)
    arms = [a for r in reports for a in r.arms]
    return sum(a.labeled for a in arms), sum(a.correct for a in arms)


def test_a_row_is_counted_once_however_often_it_is_labeled(
    handle: Any,
    real_plane: RealPlane,  # noqa: F811
) -> None:
    plane = real_plane
    predicted = {"a": _predict(handle, "a", 3, 0), "b": _predict(handle, "b", 1, 1)}
    deadline = time.monotonic() + 10
    while len(handle.observer.index) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))

    def send(*labels: tuple[str, int, bool]) -> Any:
        """Labels of (request id, row, right?)."""
        return admin.IngestLabels(
            sidecar_pb2.IngestLabelsRequest(
                labels=[
                    sidecar_pb2.Label(
                        request_id=rid,
                        row=row,
                        class_label=predicted[rid][row] if right else 1 - predicted[rid][row],
                    )
                    for rid, row, right in labels
                ]
            )
        )

    first = [("a", 0, True), ("a", 1, True), ("a", 2, False), ("b", 0, False)]
    reply = send(*first)
    assert (reply.accepted, reply.matched) == (0, 4)  # no label log here: none written
    assert _tally(plane, handle) == (4, 2)
    # The client did not hear the answer and sends the same call again.
    reply = send(*first)
    assert (reply.accepted, reply.matched) == (0, 4)  # no label log here: none written
    # A second opinion on rows already labeled, one of them twice in the same call.
    send(("a", 2, True), ("b", 0, True), ("b", 0, True))
    assert _tally(plane, handle) == (4, 2)
    # A new prediction under a used request id is a new row to label.
    predicted["b"] = _predict(handle, "b", 1, 2)
    deadline = time.monotonic() + 10
    while handle.observer.index.get("b", 0).labeled and time.monotonic() < deadline:
        time.sleep(0.02)
    send(("b", 0, True), ("b", 0, True))
    assert _tally(plane, handle) == (5, 3)
