"""The seam for consumers of predictions: prediction logs, drift accumulators.

A record is published once per completed session batch (every request in it, with inputs,
outputs, ids, latencies and status) and once per rejected request. Publishing only appends
to a buffer; one dispatch thread hands the records to the observers, never on the response
path. The thread wakes at most every ``linger`` seconds and takes everything buffered at
once, so observers that implement ``on_records`` see lists they can process in bulk (one
Arrow append, one drift update) instead of one call per request.

When observers fall behind and the buffer is full, a *lossless* hub makes publishers wait
for room (the prediction log must not lose records); otherwise records are dropped and
counted in ``dropped``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

log = structlog.get_logger("modelplane.sidecar.observers")


@dataclass(slots=True)
class BatchRecord:
    """One session call: the rows of ``len(request_ids)`` requests, stacked in that order.

    ``row_counts[i]`` rows of every array belong to request ``i``. ``outputs`` holds every
    output the call computed. ``status[i]`` is ``OK`` or the reason request ``i`` failed
    (its rows then have no meaningful outputs) and ``codes[i]`` its gRPC status name.
    """

    model: str
    version: str
    provider: str
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: dict[str, np.ndarray[Any, Any]]
    request_ids: list[str]
    trace_ids: list[str]
    row_counts: list[int]
    latencies_s: list[float]
    status: list[str]
    compute_s: float
    finished_at: float = field(default_factory=time.time)
    codes: list[str] | None = None


@dataclass(slots=True)
class RejectedRecord:
    """A request refused before it ran (bad input, shed, expired)."""

    model: str
    version: str
    request_id: str
    trace_id: str
    code: str
    reason: str
    message: str
    at: float = field(default_factory=time.time)
    latency_s: float | None = None


Record = BatchRecord | RejectedRecord


class Observer(Protocol):
    """What a prediction consumer implements (``on_records``/``on_tick`` are optional:
    without ``on_records`` the hub calls ``on_batch``/``on_rejected`` per record)."""

    def on_batch(self, record: BatchRecord) -> None:
        """Called once per completed session batch."""

    def on_rejected(self, record: RejectedRecord) -> None:
        """Called once per request refused before running."""


class ObserverHub:
    """Fans records out to observers on one background thread, through a bounded buffer.

    ``tick`` is the longest the thread sleeps: observers with ``on_tick()`` are called at
    least that often, even without traffic (time-based windows close on it).
    """

    def __init__(
        self,
        observers: list[Any] | None = None,
        capacity: int = 16384,
        *,
        lossless: bool = False,
        linger: float = 0.02,
        tick: float = 0.25,
    ) -> None:
        self._observers = list(observers or [])
        self._buffer: deque[Record] = deque()
        self._capacity = capacity
        self._lossless = lossless
        self._linger = linger
        self._tick = tick
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._sleeping = False
        self._closed = False
        self.dropped = 0
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building records otherwise)."""
        return bool(self._observers)

    def add(self, observer: Any) -> None:
        """Add an observer (before :meth:`start`)."""
        self._observers.append(observer)

    def start(self) -> None:
        """Start the dispatch thread (no-op without observers)."""
        if self._observers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="observers", daemon=True)
            self._thread.start()

    def publish(self, record: Record) -> None:
        """Hand ``record`` to the observers: waits for room (lossless) or drops it when the
        buffer is full."""
        if not self._observers:
            return
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            if not self._lossless:
                self.dropped += 1
                return
            with self._ready:
                while len(buffer) >= self._capacity and not self._closed:
                    self._room.wait(0.1)
        buffer.append(record)
        # Only a sleeping dispatcher needs waking; a busy one finds the record when it
        # drains the buffer next.
        if self._sleeping:
            with self._ready:
                self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        buffer = self._buffer
        while True:
            with self._ready:
                if not buffer and not self._closed:
                    self._sleeping = True
                    self._ready.wait(self._tick)
                    self._sleeping = False
                closed = self._closed
            if buffer and not closed and self._linger:
                # Let a burst gather so that it is handled as one list.
                time.sleep(self._linger)
            records = [buffer.popleft() for _ in range(len(buffer))]
            if records and self._lossless:
                with self._ready:
                    self._room.notify_all()
            self._dispatch(records)
            if closed and not buffer:
                return

    def _dispatch(self, records: list[Record]) -> None:
        for obs in self._observers:
            try:
                if records:
                    bulk = getattr(obs, "on_records", None)
                    if bulk is not None:
                        bulk(records)
                    else:
                        for record in records:
                            if isinstance(record, BatchRecord):
                                obs.on_batch(record)
                            else:
                                obs.on_rejected(record)
                tick = getattr(obs, "on_tick", None)
                if tick is not None:
                    tick()
            except Exception:
                log.exception("observer failed", observer=type(obs).__name__)
