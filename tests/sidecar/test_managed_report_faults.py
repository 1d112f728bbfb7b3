"""A managed sidecar's reports against a control plane (the double) that refuses them with
every kind of status code, and a stop right after a failed report."""

from __future__ import annotations

import functools
import urllib.request
from typing import Any

import grpc
import pytest
from control_plane_double import FakeControlPlane, state
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import managed_request, stub, until

from sidecar.managed.reporter import MAX_ATTEMPTS

NAME = "fraud"
_request = functools.partial(managed_request, NAME)


def _requests(reports: list[Any]) -> int:
    return sum(a.requests for r in reports for a in r.arms)


def _counter(handle: Any, name: str, **labels: str) -> float | None:
    """A sample scraped from the sidecar's metrics endpoint (None when absent)."""
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    want = {"model": NAME, **labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == want:
                return float(sample.value)
    return None


REFUSED = "modelplane_sidecar_reports_refused_total"
FAILURES = "modelplane_sidecar_report_failures_total"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_a_report_refused_for_good_is_dropped_and_later_windows_go_on(
    managed: Any, plane: FakeControlPlane, artifacts: dict, code: grpc.StatusCode
) -> None:
    # The first report with requests is refused, however often it comes.
    first: list[int] = []

    def refuse(request: Any) -> grpc.StatusCode | None:
        if not first and any(a.requests for a in request.arms):
            first.append(request.sequence)
        return code if first and request.sequence == first[0] else None

    plane.refuse = refuse
    handle = managed(metrics_listen="127.0.0.1:0")
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    s = stub(handle.port)
    s.ModelInfer(_request(seed=0))
    until(lambda: handle.reporter.refused == 1)
    for i in range(3):
        s.ModelInfer(_request(seed=i + 1))
    plane.wait_reports(lambda rs: _requests(rs) >= 3)
    assert len(plane.refused) == 1 and plane.refused[0].sequence == first[0]
    assert handle.reporter.refused_codes == {code.name: 1}
    assert _counter(handle, REFUSED, code=code.name) == 1
    assert _counter(handle, FAILURES, code=code.name) == 1
    assert all(r.sequence > first[0] for r in plane.reports if any(a.requests for a in r.arms))


def test_an_uncertain_refusal_is_retried_a_few_times_then_dropped(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    first: list[int] = []

    def refuse(request: Any) -> grpc.StatusCode | None:
        if not first and any(a.requests for a in request.arms):
            first.append(request.sequence)
        return grpc.StatusCode.UNKNOWN if first and request.sequence == first[0] else None

    plane.refuse = refuse
    handle = managed(metrics_listen="127.0.0.1:0")
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    s = stub(handle.port)
    s.ModelInfer(_request(seed=0))
    until(lambda: handle.reporter.refused == 1)
    assert len(plane.refused) == MAX_ATTEMPTS
    assert handle.reporter.refused_codes == {"UNKNOWN": 1}
    until(lambda: _counter(handle, REFUSED, code="UNKNOWN") == 1)
    assert _counter(handle, FAILURES, code="UNKNOWN") == MAX_ATTEMPTS
    s.ModelInfer(_request(seed=1))
    plane.wait_reports(lambda rs: _requests(rs) >= 1)


def test_an_outage_does_not_use_up_the_attempts_of_an_uncertain_refusal(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    # The first report with requests meets an outage (UNAVAILABLE, more often than its
    # attempts at uncertain codes), then one INTERNAL, then goes through.
    first: list[int] = []
    answers = [grpc.StatusCode.UNAVAILABLE] * (MAX_ATTEMPTS + 1) + [grpc.StatusCode.INTERNAL]

    def refuse(request: Any) -> grpc.StatusCode | None:
        if not first and any(a.requests for a in request.arms):
            first.append(request.sequence)
        if first and request.sequence == first[0] and answers:
            return answers.pop(0)
        return None

    plane.refuse = refuse
    handle = managed()
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    stub(handle.port).ModelInfer(_request(seed=0))
    plane.wait_reports(lambda rs: any(r.sequence == first[0] for r in rs))
    assert not answers and handle.reporter.refused == 0


def test_a_report_the_control_plane_already_has_counts_as_sent(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.refuse = lambda request: grpc.StatusCode.ALREADY_EXISTS
    handle = managed()
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    until(lambda: handle.reporter.sent >= 3)
    assert handle.reporter.failures == 0 and handle.reporter.refused == 0
    # Each went once: none was retried.
    sequences = [r.sequence for r in plane.refused]
    assert len(sequences) == len(set(sequences))


def test_stopping_after_a_failed_report_sends_every_window(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    # Long windows: the sidecar stops before the one after the failed report closes.
    versions = plane.versions(artifacts, 1)
    plane.push(state(NAME, 1, versions, champion=1, interval_s=3.0))
    handle = managed()
    assert handle.wait_ready(60)
    plane.refuse_reports = True
    s = stub(handle.port)
    for i in range(20):
        s.ModelInfer(_request(seed=i))
    until(lambda: handle.reporter.failures >= 1)
    plane.refuse_reports = False
    handle.stop(0)
    assert _requests(plane.reports) == 20
    assert handle.reporter.pending == 0
