"""Dynamic batching: concurrent requests with compatible tensors run as one session call.

There is no batching thread. The request threads of the gRPC pool take turns as the *leader*:
a request that finds nobody leading runs the next batch itself (so a lone request runs at
once, without a thread hop); under load, requests queue, and each leader, after its own
batch, hands the lead to the oldest waiting request. A leader waits up to ``max_delay`` for
more rows before it runs, but stops waiting while the deadline of each request that would
join the batch still leaves :data:`DEADLINE_CALLS` times the recent batch call time, plus
:data:`DEADLINE_SHARE` of the time that request had when it arrived (at least
:data:`DEADLINE_SLACK_S`): a request whose deadline is shorter than the queue delay still runs
in time, on a busy machine too. It takes requests
in arrival order that share its batch key (the same inputs with the same non-batch dims) up
to ``max_rows`` rows, and drops those whose deadline passed or whose caller went away: an
expired request never runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from modelplane.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    ModelplaneError,
    ResourceExhausted,
)

log = structlog.get_logger("modelplane.sidecar.batcher")

_QUEUED, _TAKEN, _DONE = 0, 1, 2

#: A leader stops waiting for rows when a deadline in its batch leaves this many times the
#: recent batch call time, plus time for the hand-off and the answer: :data:`DEADLINE_SHARE`
#: of the time the request had when it arrived, at least :data:`DEADLINE_SLACK_S`. A fixed
#: couple of milliseconds would be lost to one late wake-up of the leader on a loaded machine,
#: and the request would expire in the queue although it came with time to spare.
DEADLINE_CALLS = 2.0
DEADLINE_SHARE = 0.1
DEADLINE_SLACK_S = 0.002


class Item:
    """One request waiting for, or running in, a batch."""

    __slots__ = (
        "context",
        "deadline",
        "decoded",
        "enqueued",
        "error",
        "event",
        "promoted",
        "result",
        "started",
        "state",
        "ticket",
        "trace_id",
    )

    def __init__(
        self, decoded: Any, deadline: float | None, context: Any, trace_id: str = ""
    ) -> None:
        self.decoded = decoded
        self.trace_id = trace_id
        self.deadline = deadline
        self.context = context
        # Made only when the request has to wait: a request that leads runs its own batch.
        self.event: threading.Event | None = None
        self.result: Any = None
        self.error: ModelplaneError | None = None
        self.promoted = False
        self.state = _QUEUED
        self.enqueued = time.monotonic()
        self.started = 0.0
        #: ``sync`` log durability: completes once the request's records are on disk.
        self.ticket: Any = None


#: Runs a list of items as one session call, setting each item's ``result`` or ``error``.
Executor = Callable[[list[Item]], None]


class Batcher:
    """A bounded queue of requests coalesced into session calls by a rotating leader."""

    def __init__(
        self,
        execute: Executor,
        *,
        max_rows: int,
        max_delay: float,
        max_queue_rows: int,
        on_queue_rows: Callable[[int], None] | None = None,
        call_s: float = 0.0,
    ) -> None:
        """``call_s``: the expected time of one session call (warm-up's measure), the start
        of the running estimate the deadline margin uses."""
        self._execute = execute
        self._call_s = call_s if 0.0 < call_s < float("inf") else 0.0
        self._max_rows = max_rows
        self._max_delay = max_delay
        self._max_queue_rows = max_queue_rows
        self._on_queue_rows = on_queue_rows
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._queued_rows = 0
        self._leading = False
        self._waiting_leader = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def submit(self, item: Item) -> None:
        """Queue ``item`` and return once it has a result or an error (never raises)."""
        rows = item.decoded.rows
        with self._lock:
            if self._queued_rows and self._queued_rows + rows > self._max_queue_rows:
                item.error = ResourceExhausted(
                    f"the batch queue holds {self._queued_rows} rows; this request's {rows} "
                    f"would pass the limit of {self._max_queue_rows}; retry with backoff",
                    reason="QUEUE_FULL",
                )
                return
            self._queue.append(item)
            self._queued_rows += rows
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                item.event = threading.Event()
                if self._waiting_leader:
                    self._more.notify()
        if self._on_queue_rows is not None:
            self._on_queue_rows(self._queued_rows)
        if lead:
            self._lead()
        self._await(item)

    def _report_rows(self) -> None:
        if self._on_queue_rows is not None:
            self._on_queue_rows(self._queued_rows)

    def _await(self, item: Item) -> None:
        while True:
            if item.state == _DONE:
                return
            if item.event is None:
                # Setters mark the item done before they look for its event: check again.
                item.event = threading.Event()
                continue
            timeout = None if item.deadline is None else item.deadline - time.monotonic()
            if timeout is not None:
                # A wait past threading.TIMEOUT_MAX raises instead of waiting.
                timeout = min(max(timeout, 0.0), threading.TIMEOUT_MAX)
            woke = item.event.wait(timeout)
            with self._lock:
                if item.promoted:
                    item.promoted = False
                    item.event.clear()
                    promoted = True
                else:
                    promoted = False
                    if not woke and item.state == _QUEUED:
                        self._remove(item)
                        item.error = _expired()
                        item.state = _DONE
                    elif not woke and item.state == _TAKEN:
                        # Already running: the answer comes soon, the deadline is the caller's.
                        item.deadline = None
            if promoted:
                self._lead()
            elif item.state == _DONE:
                self._report_rows()

    def _remove(self, item: Item) -> None:
        try:
            self._queue.remove(item)
        except ValueError:
            return
        self._queued_rows -= item.decoded.rows

    def _lead(self) -> None:
        """Run one batch, then hand the lead on (or give it up when nothing waits).

        Whatever the executor raises, every item of the batch ends with a result or an
        error and the lead passes on: one failing batch never stalls the queue."""
        try:
            batch = self._take()
            if batch:
                now = time.monotonic()
                for it in batch:
                    it.started = now
                try:
                    self._execute(batch)
                    took = time.monotonic() - now
                    # A running estimate: the last few batches' call time.
                    self._call_s = took if not self._call_s else 0.8 * self._call_s + 0.2 * took
                except Exception:
                    log.exception("a batch failed", requests=len(batch))
                    for it in batch:
                        if it.error is None and it.result is None:
                            it.error = Internal(
                                "internal error; the server log has the details",
                                reason="BATCH_FAILED",
                            )
                finally:
                    for it in batch:
                        it.state = _DONE
                        if it.event is not None:
                            it.event.set()
        finally:
            with self._lock:
                if self._queue:
                    head = self._queue[0]
                    head.promoted = True
                    if head.event is None:
                        head.event = threading.Event()
                    head.event.set()
                else:
                    self._leading = False
        if self._on_queue_rows is not None:
            self._on_queue_rows(self._queued_rows)

    def _take(self) -> list[Item]:
        with self._lock:
            self._drop_dead()
            if not self._queue:
                return []
            head = self._queue[0]
            if self._max_delay > 0 and head.decoded.rows < self._max_rows:
                self._waiting_leader = True
                try:
                    while True:
                        rows, until = self._gathered(head)
                        if rows >= self._max_rows:
                            break
                        left = until - time.monotonic()
                        if left <= 0 or not self._more.wait(min(left, threading.TIMEOUT_MAX)):
                            break
                finally:
                    self._waiting_leader = False
                self._drop_dead()
                if not self._queue:
                    return []
                head = self._queue[0]
            batch = [head]
            rows = head.decoded.rows
            key = head.decoded.key
            if rows < self._max_rows:
                for it in list(self._queue)[1:]:
                    if it.decoded.key == key and rows + it.decoded.rows <= self._max_rows:
                        batch.append(it)
                        rows += it.decoded.rows
                        if rows >= self._max_rows:
                            break
            self._queue.popleft()
            for it in batch[1:]:
                self._queue.remove(it)
            for it in batch:
                it.state = _TAKEN
            self._queued_rows -= rows
            return batch

    def _gathered(self, head: Item) -> tuple[int, float]:
        """The rows queued that could join ``head``'s batch, and until when to wait for more:
        the queue delay after ``head`` arrived, or earlier while each of those requests'
        deadline still leaves time for a batch call."""
        key = head.decoded.key
        calls = DEADLINE_CALLS * self._call_s
        rows = 0
        until = head.enqueued + self._max_delay
        for it in self._queue:
            if it.decoded.key == key:
                rows += it.decoded.rows
                if it.deadline is not None:
                    slack = max(DEADLINE_SLACK_S, DEADLINE_SHARE * (it.deadline - it.enqueued))
                    until = min(until, it.deadline - calls - slack)
        return rows, until

    def _drop_dead(self) -> None:
        now = time.monotonic()
        dead = [
            it
            for it in self._queue
            if (it.deadline is not None and it.deadline <= now)
            or (it.context is not None and not it.context.is_active())
        ]
        for it in dead:
            self._remove(it)
            it.error = _expired() if it.context is None or it.context.is_active() else _gone()
            it.state = _DONE
            if it.event is not None:
                it.event.set()


def _expired() -> DeadlineExceeded:
    return DeadlineExceeded(
        "the request's deadline passed while it waited in the batch queue; it did not run",
        reason="DEADLINE_EXCEEDED_IN_QUEUE",
    )


def _gone() -> Cancelled:
    return Cancelled("the caller cancelled the request before it ran", reason="CANCELLED")
