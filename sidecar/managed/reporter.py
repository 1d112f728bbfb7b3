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

Reports that fail wait in a bounded queue and go out, oldest first, with the next window;
when the queue is full the oldest report is dropped (and counted). The reporter never blocks
the observer thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
import structlog

log = structlog.get_logger("modelplane.sidecar.reporter")

MAX_PENDING = 64


def next_sequence(previous: int, now: float) -> int:
    """The sequence number after ``previous`` for a window closed at ``now`` (seconds since
    the epoch): milliseconds since the epoch, but always above ``previous``."""
    return max(previous + 1, int(now * 1000))


class Reporter:
    """A thread sending queued window reports through ``send(request)``."""

    def __init__(
        self,
        send: Callable[[Any], Any],
        max_pending: int = MAX_PENDING,
        on_response: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self._pending: deque[Any] = deque()
        self._max_pending = max_pending
        self._on_response = on_response
        self._clock = clock
        #: The last sequence number given (see the module's docstring).
        self.sequence = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._emitted = 0
        self._thread: threading.Thread | None = None
        #: Reports acknowledged, failed attempts, and reports dropped from a full queue.
        self.sent = 0
        self.failures = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    def emit(self, request: Any) -> None:
        """Queue a closed window's report (numbered now); never blocks."""
        with self._cond:
            self.sequence = next_sequence(self.sequence, self._clock())
            request.sequence = self.sequence
            self._emitted += 1
            self._pending.append(request)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Reports waiting to be sent."""
        return len(self._pending)

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Try to send what is queued (up to ``flush_timeout``), then stop."""
        with self._cond:
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
            for request in batch:
                try:
                    response = self._send(request)
                except grpc.RpcError as exc:
                    self.failures += 1
                    log.warning(
                        "could not report a window; it is retried with the next one",
                        sequence=request.sequence,
                        code=exc.code().name if hasattr(exc, "code") else "",
                        pending=len(self._pending),
                    )
                    break
                except Exception:
                    self.failures += 1
                    log.exception("could not report a window", sequence=request.sequence)
                    break
                with self._cond:
                    if self._pending and self._pending[0] is request:
                        self._pending.popleft()
                self.sent += 1
                if self._on_response is not None:
                    self._on_response(response)
            else:
                continue
            if stopping:
                return
            # Failed: wait for the next window (or stop) before trying again.
            with self._cond:
                seen = self._emitted
                while self._emitted == seen and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
