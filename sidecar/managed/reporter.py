"""Sending closed windows to the control plane (``DeploymentService.ReportWindow``).

Each window gets the next per-replica sequence number when it closes, and keeps it through
retries, so a report the control plane received but could not acknowledge is recognised as a
repeat. The control plane keys repeats on (replica, sequence), and a replica's name outlives
its process (the injector names it after the pod, which a container restart keeps), so the
numbers must not start over with each process: a report's number is the wall clock in
milliseconds when its window closed, or one more than the previous report's when that is
larger (numbers always increase within a process). A process restarted under the same name
thus numbers its reports above every report of the process before it, so none is mistaken
for a repeat and the control plane's "newest report per replica" is the new process's. (A
wall clock set back by more than the restart took would break that; NTP slews rather than
steps small corrections.)

Reports wait in a bounded queue (:data:`MAX_PENDING`) and go out oldest first, each saying
how many are queued behind it when it is sent (``queued_windows``: the control plane does not
complete a step while a replica has windows of it still to send; the last of a backlog says
0); when the queue is full the oldest report is dropped, and the requests it counted never
reach the control plane's evidence. Each drop is counted (:attr:`Reporter.dropped`, and
``modelplane_sidecar_reports_dropped_total``); the first drop after a report went through is
logged as a warning, and so is the number dropped once a report goes through again (one line
at each end of an outage, not one per drop). The reporter never blocks the observer thread.
What a failed report becomes depends on the status code:

- UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED (the control plane is down, slow, busy
  or the connection broke): the report stays first in the queue and is tried again, with the
  ones after it, when the next window closes;
- RESOURCE_EXHAUSTED, UNKNOWN, INTERNAL, or an error that is no status at all: tried again
  likewise, at most :data:`MAX_ATTEMPTS` times in all, then dropped as refused;
- ALREADY_EXISTS: the control plane has the report already; it counts as sent;
- any other code (INVALID_ARGUMENT: a report it will never take; NOT_FOUND: the deployment
  is gone; FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED, ...):
  refused for good, logged with the control plane's reason, counted in
  :attr:`Reporter.refused` and dropped, and the reports after it go on at once.

:meth:`Reporter.stop` tries every queued report once more (also after a failure, the final
window included), each call bounded by the time left of ``flush_timeout``, and then stops.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from sidecar.metrics import NoManagedMetrics

log = structlog.get_logger("modelplane.sidecar.reporter")

#: Reports that may wait to be sent; past it the oldest is dropped (read when a
#: :class:`Reporter` is made without ``max_pending``).
MAX_PENDING = 64
#: How long one ReportWindow call may take (less during the flush at shutdown).
CALL_TIMEOUT_S = 10.0
#: Attempts of one report that failed with an uncertain code (see the module docstring).
MAX_ATTEMPTS = 5

_C = grpc.StatusCode
#: Codes after which the same report may well be taken later: it is retried.
RETRIED = frozenset({_C.UNAVAILABLE, _C.DEADLINE_EXCEEDED, _C.ABORTED, _C.CANCELLED})
#: Codes that may pass (a proxy, an overloaded or failing server) or never do (a message too
#: large, a bug): retried up to :data:`MAX_ATTEMPTS` attempts.
UNCERTAIN = frozenset({_C.RESOURCE_EXHAUSTED, _C.UNKNOWN, _C.INTERNAL})


def next_sequence(previous: int, now: float) -> int:
    """The sequence number after ``previous`` for a window closed at ``now`` (seconds since
    the epoch): milliseconds since the epoch, but always above ``previous``."""
    return max(previous + 1, int(now * 1000))


def _code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    try:
        got = code() if callable(code) else None
    except Exception:
        return None
    return got if isinstance(got, grpc.StatusCode) else None


def _details(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    try:
        text = details() if callable(details) else None
    except Exception:
        text = None
    return str(text or exc)[:500]


class _Entry:
    """A queued report and the attempts that failed with an uncertain code."""

    __slots__ = ("attempts", "dropped", "request", "sending")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.attempts = 0
        #: Dropped from the full queue (a batch taken before is not to send it).
        self.dropped = False
        #: Its call is under way: it may yet be delivered, so it is never the one dropped.
        self.sending = False


class Reporter:
    """A thread sending queued window reports through ``send(request)``; ``send`` bounds its
    call by :meth:`call_timeout`."""

    def __init__(
        self,
        send: Callable[[Any], Any],
        max_pending: int | None = None,
        on_response: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.time,
        call_timeout: float = CALL_TIMEOUT_S,
        metrics: NoManagedMetrics | None = None,
    ) -> None:
        self._send = send
        self._metrics = metrics if metrics is not None else NoManagedMetrics()
        self._pending: deque[_Entry] = deque()
        self._max_pending = MAX_PENDING if max_pending is None else max_pending
        self._on_response = on_response
        self._clock = clock
        self._call_timeout = call_timeout
        #: The last sequence number given (see the module's docstring).
        self.sequence = 0
        self._cond = threading.Condition()
        self._stopped = False
        #: When the flush at shutdown ends (monotonic; None until :meth:`stop`).
        self._deadline: float | None = None
        self._emitted = 0
        self._thread: threading.Thread | None = None
        #: Reports acknowledged, failed attempts, reports dropped from a full queue, and
        #: reports the control plane refused for good (dropped), by status code.
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        self.refused = 0
        self.refused_codes: dict[str, int] = {}
        #: Reports dropped from a full queue since a report last went through (logged when
        #: one goes through again).
        self._dropped_since = 0

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    def emit(self, request: Any) -> None:
        """Queue a closed window's report (numbered now); never blocks. When the queue is
        full the oldest report is dropped (counted; the first of an outage is logged)."""
        dropped: list[Any] = []
        with self._cond:
            self.sequence = next_sequence(self.sequence, self._clock())
            request.sequence = self.sequence
            self._emitted += 1
            self._pending.append(_Entry(request))
            # The report whose call is under way may yet arrive: it is not counted in the
            # bound and never dropped (the oldest after it is).
            index = 1 if self._pending[0].sending else 0
            while len(self._pending) - index > self._max_pending:
                oldest = self._pending[index]
                del self._pending[index]
                oldest.dropped = True
                dropped.append(oldest.request)
                self.dropped += 1
            first = bool(dropped) and self._dropped_since == 0
            self._dropped_since += len(dropped)
            self._cond.notify()
        for _ in dropped:
            self._metrics.report_dropped()
        if first:
            log.warning(
                "window reports are being dropped: the queue of reports the control plane "
                "has not taken is full, so the oldest is dropped and its requests are missing "
                "from the control plane's evidence; the number dropped is logged when reports "
                "go through again",
                sequence=dropped[0].sequence,
                generation=dropped[0].generation,
                max_pending=self._max_pending,
                failures=self.failures,
                dropped_total=self.dropped,
            )

    @property
    def pending(self) -> int:
        """Reports waiting to be sent."""
        return len(self._pending)

    def call_timeout(self) -> float:
        """How long the next call may take: :data:`CALL_TIMEOUT_S`, or what is left of the
        flush at shutdown."""
        deadline = self._deadline
        if deadline is None:
            return self._call_timeout
        return max(0.0, min(self._call_timeout, deadline - time.monotonic()))

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Try once more to send what is queued (for up to ``flush_timeout``), then stop."""
        with self._cond:
            if not self._stopped:
                self._deadline = time.monotonic() + flush_timeout
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(flush_timeout + 1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = list(self._pending)
                stopping = self._stopped
            if self._send_batch(batch):
                continue
            if stopping:
                self._left_unsent()
                return
            # A report to retry: wait for the next window, or for stop (a last attempt).
            with self._cond:
                seen = self._emitted
                while self._emitted == seen and not self._stopped:
                    self._cond.wait()

    def _send_batch(self, batch: list[_Entry]) -> bool:
        """Send ``batch`` in order; False when a report is left to retry (or time is up)."""
        for entry in batch:
            request = entry.request
            if self._deadline is not None and self.call_timeout() <= 0:
                return False
            with self._cond:
                if entry.dropped:
                    continue
                entry.sending = True
                request.queued_windows = self._behind(entry)
            try:
                response = self._send(request)
            except Exception as exc:
                entry.sending = False
                code = _code(exc) if isinstance(exc, grpc.RpcError) else None
                if code is grpc.StatusCode.ALREADY_EXISTS:
                    # The control plane has it (a repeat it answered as an error).
                    self._delivered(entry)
                    continue
                self.failures += 1
                self._metrics.report_failed(code)
                uncertain = code is None or code in UNCERTAIN
                if uncertain:  # failures that pass (an outage) do not use up its attempts
                    entry.attempts += 1
                name = code.name if code is not None else type(exc).__name__
                if code in RETRIED or (uncertain and entry.attempts < MAX_ATTEMPTS):
                    log.warning(
                        "could not report a window; it is retried with the next one",
                        sequence=request.sequence,
                        code=name,
                        error=_details(exc),
                        pending=len(self._pending),
                        exc_info=code is None,
                    )
                    return False
                self._done(entry)
                self.refused += 1
                self.refused_codes[name] = self.refused_codes.get(name, 0) + 1
                self._metrics.report_refused(code)
                log.error(
                    "the control plane refused a window report; it is dropped",
                    sequence=request.sequence,
                    generation=request.generation,
                    code=name,
                    error=_details(exc),
                    attempts=entry.attempts,
                    refused=self.refused,
                    exc_info=code is None,
                )
                continue
            self._delivered(entry)
            if self._on_response is not None:
                self._on_response(response)
        return True

    def _behind(self, entry: _Entry) -> int:
        """The reports queued after ``entry`` still to be sent (the dropped ones are off the
        queue); called with the lock held."""
        for i, queued in enumerate(self._pending):
            if queued is entry:
                return len(self._pending) - i - 1
        return len(self._pending)

    def _done(self, entry: _Entry) -> None:
        with self._cond:
            if self._pending and self._pending[0] is entry:
                self._pending.popleft()

    def _delivered(self, entry: _Entry) -> None:
        """``entry`` reached the control plane: off the queue, counted, and what was dropped
        since the last one logged."""
        entry.sending = False
        self._done(entry)
        self.sent += 1
        with self._cond:
            dropped, self._dropped_since = self._dropped_since, 0
        if dropped:
            log.warning(
                "window reports go through again; some were dropped from the full queue "
                "meanwhile and their requests are missing from the control plane's evidence",
                dropped=dropped,
                dropped_total=self.dropped,
            )

    def _left_unsent(self) -> None:
        if self._pending:
            log.warning(
                "window reports left unsent at shutdown",
                pending=len(self._pending),
                first_sequence=self._pending[0].request.sequence,
                dropped=self._dropped_since,
                dropped_total=self.dropped,
            )
