"""The seam for consumers of predictions: prediction logs, drift accumulators.

A record is published once per completed session batch (every request in it, with inputs,
outputs, ids, latencies and status) and once per rejected request. Publishing only appends
to a buffer; one dispatch thread hands the records to the observers, never on the response
path. The thread wakes at most every ``linger`` seconds and takes everything buffered at
once. Observers that implement ``on_runs`` get it gathered into runs of compatible records
(one array per tensor, one list per field: :func:`gather`), so a hundred requests cost one
Arrow append and one drift update, and the gathering is done once for all of them.

The buffer is bounded in records (:data:`CAPACITY`) and in the bytes of their tensors
(:data:`CAPACITY_BYTES`; a record larger than that alone still goes in when the buffer is
empty), so that requests of thousands of rows, each record megabytes, cannot fill memory
before the records reach their bound. When observers fall behind and the buffer is full, a
*lossless* hub makes publishers wait for room (the prediction log and a managed sidecar's
window reports must not lose records); otherwise records are dropped, counted in
``dropped`` (and by ``on_dropped``, a metric) and logged as a warning (at most once per
:data:`DROP_WARNING_S`).

An observer that never reads request ids (drift) says so with ``needs_ids = False``; when no
observer reads them, a request sent without an ``id`` is not given one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

log = structlog.get_logger("modelplane.sidecar.observers")

#: The least time between two warnings about records a lossy hub dropped.
DROP_WARNING_S = 60.0
#: Records the hub buffers at most.
CAPACITY = 16384
#: Bytes of tensors (inputs and outputs) the hub buffers at most: with what the dispatch
#: thread holds and hands on (to an observer process, pickled) a few times this is the most
#: the observers' backlog takes.
CAPACITY_BYTES = 64 << 20


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
    #: Equal for records whose tensors share names, trailing shapes and dtypes, when the
    #: publisher knows it (a model whose dims after the first are all fixed); None: the
    #: consumer compares the tensors itself.
    layout: Any = None


@dataclass(slots=True)
class RejectedRecord:
    """A request refused before it ran (bad input, shed, expired), with its inputs as far
    as they could be decoded (:func:`sidecar.recording.rejected_inputs`; possibly none)."""

    model: str
    version: str
    request_id: str
    trace_id: str
    code: str
    reason: str
    message: str
    at: float = field(default_factory=time.time)
    latency_s: float | None = None
    inputs: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    #: Column names of the inputs, when the model's records name them apart from what the
    #: decoded ones alone would be named (:func:`sidecar.recording.tabular_column_names`).
    column_names: dict[str, list[str]] | None = None


Record = BatchRecord | RejectedRecord


def record_bytes(record: Any) -> int:
    """The bytes of ``record``'s tensors (inputs, and outputs of a batch), also of a record
    that wraps one in ``record`` (a managed sidecar's version or shadow records), with the
    champion's outputs a shadow record carries."""
    size = 0
    for name in ("inputs", "outputs", "champion_outputs"):
        arrays = getattr(record, name, None)
        if arrays:
            for a in arrays.values():
                size += a.nbytes
                if a.dtype == object:  # BYTES: the strings' own bytes besides the pointers
                    size += sum(len(x) for x in a.flat if isinstance(x, bytes | str))
    inner = getattr(record, "record", None)
    return size if inner is None else size + record_bytes(inner)


def codes_of(record: BatchRecord) -> list[str]:
    """The gRPC status name of each request of ``record``."""
    if record.codes is not None:
        return record.codes
    return ["OK" if s == "OK" else "INTERNAL" for s in record.status]


@dataclass(slots=True)
class RecordRun:
    """Consecutive session batches of one model version whose tensors share names, trailing
    shapes and dtypes, gathered for observers that work in bulk (:func:`gather`).

    ``inputs`` and ``outputs`` stack the rows of every request in order; the other lists have
    one entry per request: ``call_rows`` the rows of the session call it ran in,
    ``finished_at`` when that call ended.
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
    codes: list[str]
    call_rows: list[int]
    finished_at: list[float]
    #: Requests that failed in the model (their rows have no meaningful outputs).
    failed: int

    def ok_rows(self) -> np.ndarray[Any, Any] | None:
        """A row mask of the requests that succeeded, or None when all did."""
        if not self.failed:
            return None
        return np.repeat([s == "OK" for s in self.status], self.row_counts)

    def arrived(self) -> np.ndarray[Any, Any]:
        """Unix seconds when each request arrived."""
        return np.asarray(self.finished_at) - np.asarray(self.latencies_s)


def _tensor_layout(record: BatchRecord) -> tuple[Any, ...]:
    def tensors(arrays: dict[str, np.ndarray[Any, Any]]) -> tuple[Any, ...]:
        return tuple([(n, a.dtype.str, a.shape[1:]) for n, a in arrays.items()])

    return (
        record.model,
        record.version,
        record.provider,
        tensors(record.inputs),
        tensors(record.outputs),
    )


class _Gathering:
    __slots__ = ("inputs", "outputs", "run")

    def __init__(self, first: BatchRecord) -> None:
        self.inputs: dict[str, list[np.ndarray[Any, Any]]] = {n: [] for n in first.inputs}
        self.outputs: dict[str, list[np.ndarray[Any, Any]]] = {n: [] for n in first.outputs}
        self.run = RecordRun(
            first.model, first.version, first.provider, {}, {}, [], [], [], [], [], [], [], [], 0
        )

    def add(self, r: BatchRecord) -> None:
        for name, array in r.inputs.items():
            self.inputs[name].append(array)
        for name, array in r.outputs.items():
            self.outputs[name].append(array)
        run = self.run
        n = len(r.request_ids)
        run.request_ids += r.request_ids
        run.trace_ids += r.trace_ids
        run.row_counts += r.row_counts
        run.latencies_s += r.latencies_s
        run.status += r.status
        run.codes += codes_of(r)
        if n == 1:
            run.call_rows.append(r.row_counts[0])
            run.finished_at.append(r.finished_at)
            if r.status[0] != "OK":
                run.failed += 1
        else:
            run.call_rows += [sum(r.row_counts)] * n
            run.finished_at += [r.finished_at] * n
            run.failed += sum(s != "OK" for s in r.status)

    def done(self) -> RecordRun:
        def joined(parts: dict[str, list[np.ndarray[Any, Any]]]) -> dict[str, Any]:
            return {n: a[0] if len(a) == 1 else np.concatenate(a) for n, a in parts.items()}

        self.run.inputs = joined(self.inputs)
        self.run.outputs = joined(self.outputs)
        return self.run


def run_of(record: BatchRecord) -> RecordRun:
    """One session batch as a run of its own."""
    gathering = _Gathering(record)
    gathering.add(record)
    return gathering.done()


def gather(records: Sequence[Record]) -> list[RecordRun | RejectedRecord]:
    """``records`` in order, consecutive session batches that agree on their tensors' layout
    gathered into one :class:`RecordRun` each."""
    out: list[_Gathering | RejectedRecord] = []
    current: _Gathering | None = None
    last: Any = None
    for record in records:
        if isinstance(record, RejectedRecord):
            out.append(record)
            current = None
            continue
        key = record.layout if record.layout is not None else _tensor_layout(record)
        if current is None or not (key is last or key == last):
            current = _Gathering(record)
            out.append(current)
            last = key
        current.add(record)
    return [part.done() if isinstance(part, _Gathering) else part for part in out]


class Observer(Protocol):
    """What a prediction consumer implements. ``on_runs``, ``on_records`` and ``on_tick``
    are optional: the hub hands what it collected to ``on_runs`` as :func:`gather` gathered
    it (once for all such observers), else as a list to ``on_records``, else record by
    record to ``on_batch``/``on_rejected``. ``needs_ids`` is optional too: an observer
    without it is taken to read request ids."""

    def on_batch(self, record: BatchRecord) -> None:
        """Called once per completed session batch."""

    def on_rejected(self, record: RejectedRecord) -> None:
        """Called once per request refused before running."""


def _needs_ids(observer: Any) -> bool:
    return bool(getattr(observer, "needs_ids", True))


class ObserverHub:
    """Fans records out to observers on one background thread, through a bounded buffer.

    ``tick`` is the longest the thread sleeps: observers with ``on_tick()`` are called at
    least that often, even without traffic (time-based windows close on it).
    """

    def __init__(
        self,
        observers: list[Any] | None = None,
        capacity: int = CAPACITY,
        *,
        capacity_bytes: int = CAPACITY_BYTES,
        lossless: bool = False,
        linger: float = 0.02,
        tick: float = 0.25,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self._observers = list(observers or [])
        self._on_dropped = on_dropped
        self._buffer: deque[tuple[Record, int]] = deque()
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        #: Bytes of the records buffered (:func:`record_bytes`).
        self._bytes = 0
        self._lossless = lossless
        self._linger = linger
        self._tick = tick
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._sleeping = False
        self._closed = False
        self.dropped = 0
        self._warned_dropped = 0
        self._warned_at: float | None = None
        self._thread: threading.Thread | None = None
        #: Whether an observer reads request ids, so that a request sent without one must
        #: be given one (an observer without a ``needs_ids`` attribute is taken to).
        self.needs_ids = any(_needs_ids(obs) for obs in self._observers)

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building records otherwise)."""
        return bool(self._observers)

    @property
    def lossless(self) -> bool:
        """Whether publishers wait for room rather than drop records."""
        return self._lossless

    def add(self, observer: Any) -> None:
        """Add an observer (before :meth:`start`)."""
        self._observers.append(observer)
        self.needs_ids = self.needs_ids or _needs_ids(observer)

    def start(self) -> None:
        """Start the dispatch thread (no-op without observers)."""
        if self._observers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="observers", daemon=True)
            self._thread.start()

    def _full(self, size: int) -> bool:
        """Whether a record of ``size`` bytes finds no room (an empty buffer takes any)."""
        buffer = self._buffer
        return len(buffer) >= self._capacity or (
            bool(buffer) and self._bytes + size > self._capacity_bytes
        )

    def publish(self, record: Record, *, wait: bool = True) -> None:
        """Hand ``record`` to the observers: waits for room (lossless, unless not to
        ``wait``) or drops it (counted) when the buffer is full; a record published once the
        hub closed is dropped too."""
        if not self._observers:
            return
        size = record_bytes(record)
        with self._ready:
            # Room is checked and taken in one step: publishers woken together by a drain
            # do not all pass for an empty buffer.
            if self._lossless and wait:
                while self._full(size) and not self._closed:
                    self._room.wait(0.1)
            if self._closed or self._full(size):
                full = True
            else:
                full = False
                self._bytes += size
                self._buffer.append((record, size))
                # Only a sleeping dispatcher needs waking; a busy one finds the record when
                # it drains the buffer next.
                if self._sleeping:
                    self._ready.notify()
        if full:
            self.dropped += 1
            if self._on_dropped is not None:
                self._on_dropped()
            self._warn_dropped()

    def _warn_dropped(self) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < DROP_WARNING_S:
            return
        self._warned_at = now
        log.warning(
            "observers fell behind; records dropped",
            dropped=self.dropped - self._warned_dropped,
            total=self.dropped,
            capacity=self._capacity,
            capacity_bytes=self._capacity_bytes,
        )
        self._warned_dropped = self.dropped

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
            taken = [buffer.popleft() for _ in range(len(buffer))]
            if taken:
                with self._ready:
                    self._bytes -= sum(size for _, size in taken)
                    if self._lossless:
                        self._room.notify_all()
            self._dispatch([record for record, _ in taken])
            if closed and not buffer:
                return

    def _dispatch(self, records: list[Record]) -> None:
        runs: list[RecordRun | RejectedRecord] | None = None
        for obs in self._observers:
            try:
                if records:
                    by_run = getattr(obs, "on_runs", None)
                    bulk = getattr(obs, "on_records", None)
                    if by_run is not None:
                        if runs is None:
                            # Gathered once for every observer that takes runs.
                            runs = gather(records)
                        by_run(runs)
                    elif bulk is not None:
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
