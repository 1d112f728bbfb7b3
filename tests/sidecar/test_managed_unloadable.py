"""Managed sidecars whose desired state names a version they cannot load: without the
candidate (canary or shadow) the champion serves alone and the candidate is retried; without
the champion nothing serves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from control_plane_double import FakeControlPlane, state
from sidecar_helpers import health_status, raw_request, stub

NAME = "fraud"


def _versions(plane: FakeControlPlane, blobs: dict[int, bytes]) -> dict:
    return {n: (plane.add_blob(data), len(data), "") for n, data in blobs.items()}


def _keyed(key: str) -> Any:
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    request = raw_request(NAME, {"input": ("FP32", x)})
    request.parameters["routing_key"].string_param = key
    return request


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_candidate_that_cannot_load_leaves_the_champion_serving_and_is_retried(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    versions = _versions(plane, {1: artifacts[1], 2: artifacts[2]})
    sha2 = versions[2][0]
    plane.corrupt.add(sha2)
    plane.push(state(NAME, 5, versions, champion=1, candidate=2, percent=50, rollout_id="r"))
    handle = managed()
    assert handle.wait_ready(30), handle.manager.last_error
    assert health_status(handle.port) == "SERVING"
    s = stub(handle.port)
    answers = {s.ModelInfer(_keyed(f"user-{i}")).model_version for i in range(40)}
    assert answers == {"1"}
    assert set(handle.manager.unloaded) == {2}
    assert handle.manager.table.generation == 5 and handle.manager.table.candidate is None
    # The control plane hears of it in every report, and the load is tried again.
    reports = plane.wait_reports(lambda rs: any(r.unloaded_versions for r in rs))
    report = next(r for r in reports if r.unloaded_versions)
    assert [u.version for u in report.unloaded_versions] == [2]
    assert report.unloaded_versions[0].error
    assert {a.arm for a in report.arms} == {"champion"} and report.rollout_id == "r"
    _wait(lambda: plane.downloads.count(sha2) >= 2, 20, "the candidate to be retried")
    assert handle.manager.failures >= 1 and "2" in (handle.manager.last_error or "")
    # Once it can be loaded, the candidate takes its share.
    plane.corrupt.clear()
    _wait(lambda: handle.manager.table.candidate is not None, 60, "the candidate to load")
    assert handle.manager.unloaded == {}
    answers = {s.ModelInfer(_keyed(f"user-{i}")).model_version for i in range(40)}
    assert answers == {"1", "2"}
    seen = len(plane.reports)
    later = plane.wait_reports(lambda rs: len(rs) > seen + 1)[seen + 1 :]
    assert all(not r.unloaded_versions for r in later)


def test_a_shadow_that_onnx_runtime_cannot_open_leaves_the_champion_serving(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    # The digest matches (the download succeeds); the bytes are no model.
    versions = _versions(plane, {1: artifacts[1], 2: b"not an onnx model" * 64})
    plane.push(state(NAME, 3, versions, champion=1, candidate=2, shadow=1.0, rollout_id="r"))
    handle = managed()
    assert handle.wait_ready(30), handle.manager.last_error
    s = stub(handle.port)
    for i in range(20):
        assert s.ModelInfer(_keyed(f"user-{i}")).model_version == "1"
    reports = plane.wait_reports(
        lambda rs: (
            sum(a.requests for r in rs for a in r.arms) >= 20
            and any(r.unloaded_versions for r in rs)
        )
    )
    assert all(not r.HasField("shadow") for r in reports)
    assert handle.shadow.completed == 0
    assert set(handle.manager.unloaded) == {2}


def test_a_champion_that_cannot_load_still_serves_nothing(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    versions = _versions(plane, {1: artifacts[1], 2: artifacts[2]})
    plane.corrupt.add(versions[1][0])
    plane.push(state(NAME, 1, versions, champion=1, candidate=2, percent=50, rollout_id="r"))
    handle = managed()
    assert not handle.wait_ready(3)
    assert handle.manager.table is None and handle.manager.failures >= 1
    assert health_status(handle.port) != "SERVING"
