"""The seam for consumers of predictions: prediction logs, drift accumulators.

An observer is called once per completed session batch (every request in it, with inputs,
outputs, ids, latencies and status) and once per rejected request, on a dispatch thread of
its own: never on the response path. When observers fall behind, records are dropped and
counted rather than slowing inference.
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


@dataclass(frozen=True)
class BatchRecord:
    """One session call: the rows of ``len(request_ids)`` requests, stacked in that order.

    ``row_counts[i]`` rows of every array belong to request ``i``. ``outputs`` holds every
    output the call computed. ``status[i]`` is ``OK`` or the reason request ``i`` failed
    (its rows then have no meaningful outputs).
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


@dataclass(frozen=True)
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


class Observer(Protocol):
    """What a prediction consumer implements."""

    def on_batch(self, record: BatchRecord) -> None:
        """Called once per completed session batch."""

    def on_rejected(self, record: RejectedRecord) -> None:
        """Called once per request refused before running."""


class ObserverHub:
    """Fans records out to observers on one background thread, through a bounded buffer."""

    def __init__(self, observers: list[Observer] | None = None, capacity: int = 1024) -> None:
        self._observers = list(observers or [])
        self._buffer: deque[BatchRecord | RejectedRecord] = deque()
        self._capacity = capacity
        self._ready = threading.Condition()
        self._closed = False
        self.dropped = 0
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building records otherwise)."""
        return bool(self._observers)

    def start(self) -> None:
        """Start the dispatch thread (no-op without observers)."""
        if self._observers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="observers", daemon=True)
            self._thread.start()

    def publish(self, record: BatchRecord | RejectedRecord) -> None:
        """Hand ``record`` to the observers; drops it when the buffer is full."""
        if not self._observers:
            return
        with self._ready:
            if len(self._buffer) >= self._capacity:
                self.dropped += 1
                return
            self._buffer.append(record)
            self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._buffer and not self._closed:
                    self._ready.wait()
                if not self._buffer:
                    return
                record = self._buffer.popleft()
            for obs in self._observers:
                try:
                    if isinstance(record, BatchRecord):
                        obs.on_batch(record)
                    else:
                        obs.on_rejected(record)
                except Exception:
                    log.exception("observer failed", observer=type(obs).__name__)
