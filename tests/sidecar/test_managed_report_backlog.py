"""The reporter says in each report how many windows are queued behind it (``queued_windows``),
so that the control plane does not complete a step on the oldest window of a backlog while the
rest of the step's windows are still on their way."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from modelplane.v1 import deployments_pb2 as dpb
from sidecar.managed.reporter import Reporter

pytestmark = pytest.mark.timeout(60)


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def _until(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _ControlPlane:
    """A send function that fails (UNAVAILABLE) until :attr:`up` is set; it records the
    sequence and ``queued_windows`` of every call, and whether it went through."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.calls: list[tuple[int, int, bool]] = []

    def __call__(self, request: Any) -> Any:
        ok = self.up.is_set()
        self.calls.append((request.sequence, request.queued_windows, ok))
        if not ok:
            raise _Unavailable()
        return dpb.ReportWindowResponse(accepted=True)

    def sent(self) -> list[tuple[int, int]]:
        return [(seq, queued) for seq, queued, ok in self.calls if ok]


@pytest.mark.parametrize("backlog", [1, 4])
def test_a_backlog_is_sent_oldest_first_counting_down_to_zero(backlog: int) -> None:
    cp = _ControlPlane()
    reporter = Reporter(cp, clock=lambda: 0.0)
    reporter.start()
    try:
        for _ in range(backlog + 1):
            reporter.emit(dpb.ReportWindowRequest())
        _until(lambda: reporter.failures >= 1)
        assert reporter.pending == backlog + 1
        cp.up.set()
    finally:
        reporter.stop(flush_timeout=5)  # tries every queued report once more
    assert reporter.sent == backlog + 1
    assert cp.sent() == [(n, backlog + 1 - n) for n in range(1, backlog + 2)]
    # Every attempt that failed was of the oldest report, saying what was queued behind it.
    failed = [(seq, queued) for seq, queued, ok in cp.calls if not ok]
    assert failed and all(seq == 1 and 0 <= queued <= backlog for seq, queued in failed)


def test_dropped_reports_are_not_counted_as_queued() -> None:
    cp = _ControlPlane()
    cp.up.set()
    reporter = Reporter(cp, max_pending=2, clock=lambda: 0.0)
    for _ in range(4):  # queued before the thread starts: the oldest two are dropped
        reporter.emit(dpb.ReportWindowRequest())
    assert reporter.dropped == 2 and reporter.pending == 2
    reporter.start()
    try:
        _until(lambda: reporter.sent == 2)
    finally:
        reporter.stop()
    assert cp.sent() == [(3, 1), (4, 0)]
