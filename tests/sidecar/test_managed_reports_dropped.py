"""Window reports dropped from a managed sidecar's full report queue, while the control plane
(the double) refuses every report as unavailable: each drop is counted in
``modelplane_sidecar_reports_dropped_total``, and the log says when drops start and how many
there were once reports go through again (one line each, not one per drop)."""

from __future__ import annotations

import functools
import urllib.request
from typing import Any

import pytest
import structlog
from control_plane_double import FakeControlPlane, state
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import managed_request, stub, until

NAME = "fraud"
DROPPED = "modelplane_sidecar_reports_dropped_total"
STARTED = "window reports are being dropped"
AGAIN = "window reports go through again"
_request = functools.partial(managed_request, NAME)


def _sample(handle: Any, name: str) -> float | None:
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"model": NAME}:
                return float(sample.value)
    return None


def _events(logs: list[dict[str, Any]], start: str) -> list[dict[str, Any]]:
    return [e for e in logs if str(e["event"]).startswith(start)]


@pytest.fixture
def small_queue(monkeypatch: Any) -> int:
    """Four reports may wait (64 in production): a few windows of 0.1 s fill the queue."""
    monkeypatch.setattr("sidecar.managed.reporter.MAX_PENDING", 4)
    return 4


def test_reports_dropped_from_a_full_queue_are_counted_and_logged(
    managed: Any, plane: FakeControlPlane, artifacts: dict, small_queue: int
) -> None:
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1, interval_s=0.1))
    with structlog.testing.capture_logs() as logs:
        handle = managed(metrics_listen="127.0.0.1:0")
        assert handle.wait_ready(60)
        assert _sample(handle, DROPPED) == 0  # the series exists before any drop
        plane.wait_reports(lambda rs: len(rs) >= 1)
        s = stub(handle.port)
        plane.refuse_reports = True
        s.ModelInfer(_request(seed=0))
        until(lambda: handle.reporter.dropped >= 5)
        assert handle.reporter.pending == small_queue
        until(lambda: (_sample(handle, DROPPED) or 0) >= 5)
        # One line when drops start, however many follow.
        assert len(_events(logs, STARTED)) == 1
        assert not _events(logs, AGAIN)
        plane.refuse_reports = False
        until(lambda: bool(_events(logs, AGAIN)))
        first_outage = handle.reporter.dropped
        (again,) = _events(logs, AGAIN)
        assert again["log_level"] == "warning"
        assert again["dropped"] == first_outage == again["dropped_total"]
        assert _sample(handle, DROPPED) == first_outage
        # A second outage is logged again, its count on its own.
        plane.refuse_reports = True
        until(lambda: handle.reporter.dropped >= first_outage + 3)
        assert len(_events(logs, STARTED)) == 2
        plane.refuse_reports = False
        until(lambda: len(_events(logs, AGAIN)) == 2)
    second = _events(logs, AGAIN)[1]
    assert second["dropped"] == handle.reporter.dropped - first_outage
    assert second["dropped_total"] == handle.reporter.dropped
    assert _sample(handle, DROPPED) == handle.reporter.dropped
    assert all(e["log_level"] == "warning" for e in _events(logs, STARTED))


def test_the_report_being_sent_is_never_counted_as_dropped() -> None:
    """A full queue drops the oldest report whose call is not under way: one being sent may
    yet arrive (a slow call that succeeds), so it is neither dropped nor counted as such."""
    import threading
    import time

    from modelplane.v1 import deployments_pb2
    from sidecar.managed.reporter import Reporter

    release, started = threading.Event(), threading.Event()
    delivered: list[int] = []

    def send(request: Any) -> None:
        if request.generation == 1:
            started.set()
            release.wait(10)  # the first call takes long, then succeeds
        delivered.append(request.generation)

    reporter = Reporter(send, max_pending=1)
    reporter.start()
    try:
        reporter.emit(deployments_pb2.ReportWindowRequest(generation=1))
        assert started.wait(10)
        reporter.emit(deployments_pb2.ReportWindowRequest(generation=2))
        assert reporter.dropped == 0
        # A third report while the first is still under way: the bound drops the second.
        reporter.emit(deployments_pb2.ReportWindowRequest(generation=3))
        assert reporter.dropped == 1
        release.set()
        until(lambda: reporter.sent == 2)
        time.sleep(0.1)
        assert delivered == [1, 3] and reporter.dropped == 1
    finally:
        release.set()
        reporter.stop()
