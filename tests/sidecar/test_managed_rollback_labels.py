"""Labels of rows a candidate answered still join after a rollback: no version holds the
candidate arm then, so the reports carry them under the candidate's arm and version. Once
another candidate holds the arm, the earlier one's rows join nothing. The rollouts are real
ones on a real control plane, whose stored reports are read back."""

from __future__ import annotations

from typing import Any

import grpc
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import managed_request, stub, until

from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"


def _label(h: Any, ids: list[str]) -> Any:
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(h.address))
    return admin.IngestLabels(
        sidecar_pb2.IngestLabelsRequest(
            labels=[sidecar_pb2.Label(request_id=i, class_label=0) for i in ids]
        )
    )


def _answer_as_candidate(h: Any, prefix: str, n: int) -> list[str]:
    s = stub(h.port)
    ids = [f"{prefix}{i}" for i in range(n)]
    for i, request_id in enumerate(ids):
        assert s.ModelInfer(managed_request(NAME, seed=i, id=request_id)).model_version == "2"
    until(lambda: all(h.observer.index.get(r, 0) is not None for r in ids))
    return ids


def test_a_rolled_back_candidates_rows_still_join_labels(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: Any,
) -> None:
    plane = real_plane
    plane.deploy({n: artifacts[n] for n in (1, 2)})
    plane.canary(2, 100.0)
    h = real_managed()
    assert h.wait_ready(60)
    ids = _answer_as_candidate(h, "c", 10)
    # Rolled back: version 1 alone serves.
    generation = plane.client.rollback_rollout(NAME).generation
    until(lambda: h.manager.table.generation == generation, 60)
    assert h.manager.table.candidate is None
    assert _label(h, ids).matched == 10
    reports = plane.wait_reports(
        lambda rs: sum(a.labeled for r in rs for a in r.arms if a.arm == "candidate") >= 10
    )
    labeled = [(r.generation, a.arm, a.version, a.labeled) for r in reports for a in r.arms]
    # In the window open when the labels came (its routing table may be either one).
    assert sum(n for _, arm, v, n in labeled if (arm, v) == ("candidate", 2)) == 10
    assert sum(n for *_, n in labeled) == 10


def test_a_replaced_candidates_rows_join_nothing(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: Any,
) -> None:
    plane = real_plane
    # Version 3 is another upload of the champion's model.
    plane.deploy({1: artifacts[1], 2: artifacts[2], 3: artifacts[1]})
    plane.canary(2, 100.0)
    h = real_managed()
    assert h.wait_ready(60)
    ids = _answer_as_candidate(h, "c", 5)
    # Another artifact now holds the candidate arm: version 2's rollout ends, version 3's starts.
    plane.client.rollback_rollout(NAME)
    plane.canary(3, 100.0)
    generation = plane.client.get_deployment(NAME).generation
    until(lambda: h.manager.table.generation == generation, 60)
    assert h.manager.table.candidate.number == 3
    assert _label(h, ids).matched == 0
