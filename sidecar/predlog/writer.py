"""The background writer: a bounded queue of appends, one thread that writes Arrow batches.

Callers only check their batch and queue it (waiting only when the queue is full). The
writer thread takes everything queued at once, builds one RecordBatch per column layout,
writes it, and completes the appends' shared ticket: in ``sync`` mode after an fsync (group
commit: every append of the round shares one fsync), in ``async`` mode once the bytes are
handed to the OS, which happens at least every flush interval. Any failure to write stops
the writer for good: tickets fail, appends raise :class:`PredictionLogFailed`, failure
callbacks run and ``healthy`` turns False. Nothing is dropped silently: records that could
not be written are counted (``modelplane_prediction_log_dropped_records_total``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import structlog
from prometheus_client import CollectorRegistry

from sidecar.predlog.convert import (
    Entry,
    LayoutCache,
    group_entries,
    prepare_batch,
    prepare_rejected,
    to_record_batch,
)
from sidecar.predlog.files import sweep
from sidecar.predlog.fileset import OpenFiles
from sidecar.predlog.metrics import PredictionLogMetrics
from sidecar.predlog.records import PredictionBatch, RejectedRequest
from sidecar.predlog.settings import PredictionLogSettings

log = structlog.get_logger("modelplane.sidecar.predlog")

FailureCallback = Callable[[BaseException], Any]


class PredictionLogError(RuntimeError):
    """The prediction log cannot take records."""


class PredictionLogFailed(PredictionLogError):
    """The writer hit an error (usually the disk) and stopped; see ``__cause__``."""


class PredictionLogBusy(PredictionLogError):
    """A record not queued, for want of room, by a caller that would not wait (counted in
    the dropped records)."""


class PredictionLogClosed(PredictionLogError):
    """The writer was closed."""


class PredictionLogWriter:
    """Appends prediction records to rotating Arrow IPC stream files under ``settings.dir``.

    Open one with :func:`open_prediction_log`; call :meth:`close` at shutdown. ``append`` and
    ``append_rejected`` are thread-safe and return a ``Future`` that completes (result None)
    once the records are written (``async``) or written and fsynced (``sync``), or fails with
    :class:`PredictionLogFailed`.
    """

    def __init__(
        self,
        settings: PredictionLogSettings,
        *,
        registry: CollectorRegistry | None = None,
        on_failure: FailureCallback | None = None,
    ) -> None:
        if settings.dir is None:
            raise ValueError("the prediction log needs a directory (--log-dir)")
        self.settings = settings
        self.directory = Path(settings.dir)
        self.metrics = PredictionLogMetrics(registry)
        self._sync = settings.durability == "sync"
        self._cache = LayoutCache(frozenset(settings.exclude_features))
        self._write_rows = max(1, settings.queue_rows // 4)
        compression = None if settings.compression == "none" else settings.compression
        self._options = pa.ipc.IpcWriteOptions(compression=compression)
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._queue: list[Entry] = []
        self._queued_rows = 0
        self._first_queued = 0.0
        self._group: Future[None] = Future()
        self._flush_requested = False
        self._closing = False
        self._error: PredictionLogFailed | None = None
        self._callbacks: list[FailureCallback] = [on_failure] if on_failure else []
        self._thread: threading.Thread | None = None
        self._files = OpenFiles(self.directory, self._options, self._sync, self.metrics)
        self._next_sweep = 0.0

    # -- caller side ---------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False once the writer has failed (the server then reports NOT_SERVING)."""
        return self._error is None

    @property
    def error(self) -> PredictionLogFailed | None:
        """Why the writer stopped, if it did."""
        return self._error

    @property
    def current_file(self) -> Path | None:
        """The file written most recently, if one is open."""
        current = self._files.latest
        return None if current is None else current.path

    @property
    def open_files(self) -> list[Path]:
        """Every file open for writing (one per schema that cannot merge with the others)."""
        return [f.path for f in self._files]

    def add_failure_callback(self, callback: FailureCallback) -> None:
        """Call ``callback(error)`` (on the writer thread) when the writer fails."""
        self._callbacks.append(callback)

    def append(self, batch: PredictionBatch) -> Future[None]:
        """Queue one record per row of ``batch``; see the class docstring for the ticket.

        Raises ``ValueError``/``TypeError`` for a malformed batch (nothing is queued) and
        :class:`PredictionLogError` once the writer has failed or closed.
        """
        return self._enqueue(prepare_batch(batch, self._cache, time.time()))

    def append_rejected(self, request: RejectedRequest, *, wait: bool = True) -> Future[None]:
        """Queue the record(s) of a rejected request; like :meth:`append`. Without ``wait``
        a full queue raises :class:`PredictionLogBusy` (the records counted as dropped)."""
        return self._enqueue(prepare_rejected(request, self._cache, time.time()), wait=wait)

    def flush(self, timeout: float | None = None) -> None:
        """Write and fsync everything appended so far; raises if the writer failed."""
        with self._lock:
            self._check_open()
            ticket = self._group
            self._flush_requested = True
            self._has_work.notify()
        ticket.result(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, close the file (fsynced) and stop the thread."""
        with self._lock:
            self._closing = True
            self._has_work.notify()
            self._has_room.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise PredictionLogError(f"the prediction log writer did not stop in {timeout}s")

    def __enter__(self) -> PredictionLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_taken(self, entry: Entry) -> None:
        """:meth:`_check_open` for an append, counting its records as dropped when refused."""
        try:
            self._check_open()
        except PredictionLogError:
            self.metrics.dropped.labels(entry.kind).inc(entry.n_rows)
            raise

    def _check_open(self) -> None:
        if self._error is not None:
            raise PredictionLogFailed(str(self._error)) from self._error.__cause__
        if self._closing:
            raise PredictionLogClosed("the prediction log is closed")

    def _enqueue(self, entry: Entry, *, wait: bool = True) -> Future[None]:
        waited = 0.0
        limit = self.settings.queue_rows
        with self._lock:
            self._check_taken(entry)
            if self._queued_rows and self._queued_rows + entry.n_rows > limit:
                if not wait:
                    self.metrics.dropped.labels(entry.kind).inc(entry.n_rows)
                    raise PredictionLogBusy("the prediction log's queue is full")
                started = time.perf_counter()
                while self._queued_rows and self._queued_rows + entry.n_rows > limit:
                    self._has_room.wait()
                    self._check_taken(entry)
                waited = time.perf_counter() - started
            first = not self._queue
            if first:
                self._first_queued = time.monotonic()
            self._queue.append(entry)
            self._queued_rows += entry.n_rows
            ticket = self._group
            # The first entry sets the flush deadline the writer sleeps until.
            if first or self._sync or self._queued_rows >= self._write_rows:
                self._has_work.notify()
        if waited:
            self.metrics.queue_wait.observe(waited)
        return ticket

    # -- writer thread -------------------------------------------------------------------

    def start(self) -> None:
        """Create the directory, apply retention, warm the write path up and start the
        writer thread."""
        check_directory(self.directory)
        self._sweep()
        warm_up(self._options)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _deadline(self, now: float) -> float | None:
        """Seconds until the next timed duty (flush, age rotation, retention), or None."""
        deadlines = []
        if self._queue:
            deadlines.append(self._first_queued + self.settings.flush_interval)
        if len(self._files):
            deadlines.append(min(f.opened for f in self._files) + self.settings.rotate_age)
        if self.settings.retention is not None:
            deadlines.append(self._next_sweep)
        return None if not deadlines else min(deadlines) - now

    def _due(self, now: float) -> bool:
        if self._closing or self._flush_requested:
            return True
        if not self._queue:
            return False
        return (
            self._sync
            or self._queued_rows >= self._write_rows
            or now >= self._first_queued + self.settings.flush_interval
        )

    def _run(self) -> None:
        ticket: Future[None] | None = None
        #: The round being written: lost with the queue when the writer fails.
        entries: list[Entry] = []
        try:
            while True:
                with self._lock:
                    while not self._due(time.monotonic()):
                        timeout = self._deadline(time.monotonic())
                        if timeout is not None and timeout <= 0:
                            break
                        self._has_work.wait(timeout)
                    entries, self._queue = self._queue, []
                    self._queued_rows = 0
                    ticket, self._group = self._group, Future()
                    forced, self._flush_requested = self._flush_requested, False
                    closing = self._closing
                    self._has_room.notify_all()
                self._write(entries, durable=self._sync or forced)
                ticket.set_result(None)
                ticket, entries = None, []
                if closing:
                    self._files.close_all()
                    return
                self._timed_duties()
        except BaseException as exc:  # any failure stops the log, loudly
            self._fail(exc, ticket, entries)

    def _write(self, entries: list[Entry], durable: bool) -> None:
        written: list[tuple[pa.RecordBatch, str]] = []
        for group in group_entries(entries):
            batch, left_out = to_record_batch(group, self.settings.sample_rate)
            if left_out:
                self.metrics.sampled_out.inc(left_out)
            if batch.num_rows:
                written.append((batch, group[0].kind))
        if written:
            self._replace_taken()
            self._files.write([b for b, _ in written])
        if written or durable:
            self._files.flush(durable)
        for batch, kind in written:
            self.metrics.records.labels(kind).inc(batch.num_rows)
        if self._files.close_where(lambda f: f.size >= self.settings.rotate_size):
            self._sweep()

    def _replace_taken(self) -> None:
        """Before each round: a file that was deleted or moved while open (a log shipper or
        a clean-up that did not wait for it to close) gets no more records; they go to a new
        file. One ``stat`` per open file: a small part of a round's cost."""
        for log_file, how in self._files.replace_taken():
            log.warning(
                "prediction_log_file_taken",
                file=str(log_file.path),
                how=how,
                records=log_file.records,
                hint=(
                    "the file was deleted or moved while the sidecar was writing it; later "
                    "records go to a new file. Take only closed files: those that end with "
                    "Arrow's end-of-stream mark and that no writer holds a lock on"
                ),
            )

    def _timed_duties(self) -> None:
        now = time.monotonic()
        rotated = self._files.close_where(lambda f: now >= f.opened + self.settings.rotate_age)
        if rotated or (self.settings.retention is not None and now >= self._next_sweep):
            self._sweep()

    def _sweep(self) -> None:
        retention = self.settings.retention
        if retention is None:
            return
        self._next_sweep = time.monotonic() + min(60.0, retention / 4)
        try:
            deleted = sweep(self.directory, retention, self.open_files)
        except OSError as exc:
            log.warning("prediction_log_retention_failed", dir=str(self.directory), error=str(exc))
            return
        if deleted:
            self.metrics.deleted_files.inc(deleted)

    def _fail(
        self, exc: BaseException, ticket: Future[None] | None, in_flight: list[Entry]
    ) -> None:
        """Stop for good after ``exc``: fail the tickets of the round being written
        (``in_flight``, whose ticket is ``ticket``) and of everything queued, and say how many
        rows that leaves unwritten."""
        error = PredictionLogFailed(f"the prediction log writer stopped: {exc}")
        error.__cause__ = exc
        with self._lock:
            self._error = error
            pending, self._group = self._group, Future()
            # The failed round's rows count too: its ticket fails, so none of them is
            # acknowledged as written (a reader may still find batches it completed).
            unwritten = [*in_flight, *self._queue]
            self._queue, self._queued_rows = [], 0
            self._has_room.notify_all()
        for entry in unwritten:
            self.metrics.dropped.labels(entry.kind).inc(entry.n_rows)
        lost = sum(e.n_rows for e in unwritten)
        for waiting in (ticket, pending):
            if waiting is not None and not waiting.done():
                waiting.set_exception(error)
        abandoned = self._files.abandon_all()
        self.metrics.errors.inc()
        self.metrics.healthy.set(0)
        log.error(
            "prediction_log_failed",
            dir=str(self.directory),
            files=[str(p) for p in abandoned],
            error=str(exc),
            errno=getattr(exc, "errno", None),
            unwritten_rows=lost,
            hint="records are no longer logged; the sidecar should stop serving",
        )
        for callback in self._callbacks:
            try:
                callback(error)
            except Exception as cb_exc:  # one callback must not stop the others
                log.error("prediction_log_failure_callback_failed", error=str(cb_exc))


def check_directory(directory: Path) -> None:
    """Create ``directory`` if need be; raise ``OSError`` when it cannot be created or this
    process cannot create files in it (a read-only disk, a file in the way, permissions)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to the prediction log directory {directory}")


def warm_up(options: pa.ipc.IpcWriteOptions) -> None:
    """Turn a made-up record and a refusal into Arrow IPC bytes, in memory, as a write round
    does. pyarrow loads modules on first use (its first array from numpy imports pandas:
    a few hundred ms, a second and more on a busy machine), and the first round would pay
    for it while the records of every request answered meanwhile wait unwritten: an
    ``async`` log that is killed then loses far more than one flush interval. Paid here,
    before the sidecar reports ready, the first round is as quick as any other."""
    cache = LayoutCache(frozenset())
    now = time.time()
    x = np.zeros((2, 2), np.float32)
    entries = [
        prepare_batch(
            PredictionBatch("warm-up", "0", ["a", "b"], [1, 1], {"x": x}, {"y": x[:, :1]}),
            cache,
            now,
        ),
        prepare_rejected(
            RejectedRequest("c", "INVALID_ARGUMENT", "WARM_UP", inputs={"x": x[:1]}), cache, now
        ),
    ]
    sink = pa.BufferOutputStream()
    for group in group_entries(entries):
        batch, _ = to_record_batch(group, 1.0)
        with pa.ipc.new_stream(sink, batch.schema, options=options) as stream:
            stream.write_batch(batch)


def open_prediction_log(
    settings: PredictionLogSettings,
    *,
    registry: CollectorRegistry | None = None,
    on_failure: FailureCallback | None = None,
) -> PredictionLogWriter:
    """Open the log under ``settings.dir`` and start its writer thread."""
    writer = PredictionLogWriter(settings, registry=registry, on_failure=on_failure)
    writer.start()
    return writer
