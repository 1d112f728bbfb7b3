"""The served model: one ORT runtime with its signature, batcher, metrics and observers.

Everything that belongs to one model version lives in one :class:`ServingModel`, held by a
:class:`ModelSlot`, so a later version can replace it atomically while requests that already
hold the old one finish on it.

When ONNX Runtime fails on a request that passed validation, the failure is the model's
reaction to those values (an index out of range, say), so the request is answered
INVALID_ARGUMENT with reason ``MODEL_EXECUTION_FAILED``; a batch that fails is rerun request
by request so that only the request that caused it gets the error.

Observers (prediction log, drift) get one record per session call through the hub. In
``sync`` log durability the request thread that ran the call also appends it to the log, and
every request in it is answered only once that append's ticket completes (written and
fsynced); a log that has failed fails the request with UNAVAILABLE, records the log cannot
take at all (clashing column names) fail it with INTERNAL (``PREDICTION_LOG_REJECTED``).

Records hold one row per request row. An output that is not one row per input row (a
scalar, or a first dim that is fixed) is recorded repeated on each row of its request; one
whose first dim varies but turns out to differ from the request's rows is left out of that
request's record (repeated, it would change its column's type from record to record). An
input that is not one row per request row (a scalar, a fixed first dim, a first dim named
apart from the rows': see :class:`sidecar.signature.Signature`) is left out of the records,
and so is every input of a request whose row inputs disagree on the rows (it counts as one
row). A model with such a tensor never batches, nor one whose outputs may change size with
the values in a batch (``Signature.unbatchable``), nor one whose answers to sample requests
change when they run stacked (checked at load: :mod:`sidecar.batch_check`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import structlog

from modelplane.errors import Internal, InvalidArgument, NotFound, Unavailable
from sidecar.batcher import Batcher, Item
from sidecar.codec import Decoded, Limits, decode
from sidecar.driftfeed import DriftReports
from sidecar.metrics import NoMetrics
from sidecar.observers import BatchRecord, ObserverHub
from sidecar.predlog import PredictionLogError
from sidecar.recording import SyncLog
from sidecar.response import ResponseEncoder
from sidecar.runtime import Runtime

log = structlog.get_logger("modelplane.sidecar.model")

Arrays = list[np.ndarray[Any, Any]]


class ServingModel:
    """Validates, batches and runs requests for one model version."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str,
        version: str,
        limits: Limits,
        max_batch_rows: int,
        max_delay: float,
        max_queue_rows: int,
        metrics: NoMetrics | None = None,
        observers: ObserverHub | None = None,
        sync_log: SyncLog | None = None,
        drift: DriftReports | None = None,
    ) -> None:
        self.runtime = runtime
        self.signature = runtime.signature
        self.name = name
        self.version = version
        self.limits = limits
        self.metrics = metrics or NoMetrics()
        self.observers = observers or ObserverHub()
        #: Appends from the request path in ``sync`` log durability (None otherwise).
        self.sync_log = sync_log
        #: The drift feed (in process or in the observer process), when a baseline was given.
        self.drift = drift
        #: Whether anything records this model's predictions (observers or a ``sync`` log).
        self.observed = self.observers.active or sync_log is not None
        #: Whether a request sent without an id must be given one (something records ids).
        self.needs_ids = self.observers.needs_ids or sync_log is not None
        sig = self.signature
        logged = [t for t in sig.inputs if t.per_row]
        #: The inputs records carry, when some are left out (None: all of them).
        self._logged_inputs = (
            None if len(logged) == len(sig.inputs) else frozenset(t.name for t in logged)
        )
        #: Whether the logged inputs can disagree on the rows (then one that does is left out).
        self._rows_may_differ = len(logged) > 1
        # Every dim after the first fixed: all records carrying every output share one
        # tensor layout, so consumers can gather them without comparing shapes.
        fixed = all(t.tail is not None for t in (*logged, *sig.outputs))
        self._layout: object | None = object() if fixed else None
        #: Outputs that are not one row per input row (a scalar, a fixed first dim): records
        #: carry them repeated on each row of the request, so that every row has its outputs.
        self._whole = frozenset(t.name for t in sig.outputs if not t.batch_dynamic)
        self._timed = self.metrics.enabled
        self.encoder = ResponseEncoder(name, version, self.signature)
        self._order = {n: i for i, n in enumerate(self.signature.output_names)}
        self.batcher: Batcher | None = None
        #: Why requests are not batched although the batch size allows it (None: they are,
        #: or the batch size is 1).
        self.batching_off = sig.unbatchable if max_batch_rows > 1 else None
        if self.batching_off is not None:
            log.info(
                "batching off for this model", model=name, version=version, reason=self.batching_off
            )
        elif max_batch_rows > 1:
            self.batcher = Batcher(
                self._execute,
                max_rows=max_batch_rows,
                max_delay=max_delay,
                max_queue_rows=max_queue_rows,
                on_queue_rows=self.metrics.queue_rows if self.metrics.enabled else None,
                call_s=runtime.single_call_s,
            )

    @property
    def queued_rows(self) -> int:
        """Rows waiting in this model's batch queue (0 unbatched)."""
        return 0 if self.batcher is None else self.batcher.queued_rows

    def check_target(self, name: str, version: str) -> None:
        """Raise NOT_FOUND unless ``name``/``version`` address this model."""
        if name != self.name:
            raise NotFound(
                f"model {name!r} is not served here; this sidecar serves {self.name!r}",
                reason="MODEL_NOT_FOUND",
            )
        if version and version != self.version:
            raise NotFound(
                f"version {version!r} of model {name!r} is not served here; this sidecar serves "
                f"version {self.version!r}",
                reason="MODEL_VERSION_NOT_FOUND",
            )

    def infer(
        self, request: Any, deadline: float | None, context: Any, trace_id: str = ""
    ) -> tuple[tuple[str, ...], Arrays]:
        """Validate and run ``request``; returns the requested output names and arrays."""
        decoded = decode(request, self.signature, self.limits)
        batcher = self.batcher
        if batcher is None or decoded.key is None:
            if not self.observed:
                return decoded.outputs, self._run_alone(decoded)
            item = Item(decoded, None, None, trace_id)
            item.started = item.enqueued
            self._run_one(item)
        else:
            item = Item(decoded, deadline, context, trace_id)
            batcher.submit(item)
            if item.error is None and self._timed:
                self.metrics.queued(item.started - item.enqueued)
        if item.ticket is not None:
            self._await_log(item)
        if item.error is not None:
            raise item.error
        return decoded.outputs, item.result  # type: ignore[no-any-return]

    def _await_log(self, item: Item) -> None:
        """``sync`` durability: answer only once the request's records are on disk."""
        try:
            item.ticket.result()
        except PredictionLogError as exc:
            if item.error is None:
                item.error = Unavailable(
                    "the prediction could not be logged durably, so it is not returned: "
                    f"{exc}; this sidecar stopped serving (see its log)",
                    reason="PREDICTION_LOG_FAILED",
                )
        except Exception:
            # The log could not take these records (it logged why); it goes on serving.
            if item.error is None:
                item.error = Internal(
                    "the prediction could not be written to the prediction log, so it is not "
                    "returned; the server log says why",
                    reason="PREDICTION_LOG_REJECTED",
                )

    def _run_alone(self, decoded: Decoded) -> Arrays:
        """The unbatched, unobserved path: one session call, no queue item."""
        if self._timed:
            start = time.perf_counter()
        try:
            results = self.runtime.run(decoded.outputs, decoded.arrays)
        except Exception as exc:
            log.warning("model execution failed", request_id=decoded.request_id, error=str(exc))
            raise _execution_failed(exc) from None
        if self._timed:
            self.metrics.batch(decoded.rows, time.perf_counter() - start)
        return results

    def _execute(self, batch: list[Item]) -> None:
        """Run ``batch`` as one session call and give each item its rows of every output."""
        if len(batch) == 1:
            self._run_one(batch[0])
            return
        wanted = (
            self.signature.output_names
            if self.observed
            else sorted(
                {n for it in batch for n in it.decoded.outputs}, key=self._order.__getitem__
            )
        )
        total = sum(it.decoded.rows for it in batch)
        parts = {
            name: [it.decoded.arrays[name] for it in batch] for name in batch[0].decoded.arrays
        }
        start = time.perf_counter()
        try:
            results, feeds = self.runtime.run_rows(wanted, parts, keep_inputs=self.observed)
        except Exception:
            for it in batch:
                self._run_one(it)
            return
        elapsed = time.perf_counter() - start
        if any(r.ndim == 0 or r.shape[0] != total for r in results):
            # The model's outputs are not per row after all: run each request by itself.
            for it in batch:
                self._run_one(it)
            return
        self.metrics.batch(total, elapsed)
        by_name = dict(zip(wanted, results, strict=True))
        lo = 0
        for it in batch:
            hi = lo + it.decoded.rows
            it.result = [by_name[n][lo:hi] for n in it.decoded.outputs]
            lo = hi
        if self.observed:
            self._publish(batch, feeds, by_name, elapsed)

    def _run_one(self, item: Item) -> None:
        decoded: Decoded = item.decoded
        # Observers get every output, so that records of one model share one layout.
        names = self.signature.output_names if self.observed else decoded.outputs
        start = time.perf_counter()
        try:
            results = self.runtime.run(names, decoded.arrays)
        except Exception as exc:
            item.error = failed = _execution_failed(exc)
            log.warning("model execution failed", request_id=decoded.request_id, error=str(exc))
            if self.observed:
                self._publish([item], decoded.arrays, {}, time.perf_counter() - start)
                failed.published = True
            return
        elapsed = time.perf_counter() - start
        self.metrics.batch(decoded.rows, elapsed)
        if names is decoded.outputs:
            item.result = results
        else:
            by_name = dict(zip(names, results, strict=True))
            item.result = [by_name[n] for n in decoded.outputs]
        if self.observed:
            self._publish([item], decoded.arrays, dict(zip(names, results, strict=True)), elapsed)

    def _publish(
        self,
        batch: list[Item],
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: dict[str, np.ndarray[Any, Any]],
        compute_s: float,
    ) -> None:
        now = time.monotonic()
        layout = self._layout if outputs else None
        rows = batch[0].decoded.rows if len(batch) == 1 else sum(it.decoded.rows for it in batch)
        if self._logged_inputs is not None:
            inputs = {n: a for n, a in inputs.items() if n in self._logged_inputs}
        if self._rows_may_differ and any(a.shape[0] != rows for a in inputs.values()):
            # Inputs of independent first dims (sidecar.codec) disagree on the request's rows.
            # Its rows are the most any input has: an input of one row (a query beside its
            # candidates) holds for each of them. Inputs of other counts cannot be split into
            # those rows, so the record then carries none: the log's columns are named after
            # the model's logged inputs, and a record carrying only some of them would name
            # theirs as if the model had no others (``--log-exclude-features`` names included).
            rows = max(a.shape[0] for a in inputs.values())
            if all(a.shape[0] in (1, rows) for a in inputs.values()):
                inputs = {
                    n: a if a.shape[0] == rows else np.repeat(a, rows, axis=0)
                    for n, a in inputs.items()
                }
            else:
                inputs = {}
            layout = None
        whole = self._whole
        stray = None
        for name, array in outputs.items():
            if name in whole:
                outputs[name] = np.repeat(array[np.newaxis], rows, axis=0)
            elif array.ndim == 0 or array.shape[0] != rows:
                stray = [name] if stray is None else [*stray, name]
        if stray is not None:
            outputs = {n: a for n, a in outputs.items() if n not in stray}
            layout = None
        if len(batch) == 1:
            # One request per call is the common case: build its lists directly.
            it = batch[0]
            err = it.error
            record = BatchRecord(
                self.name,
                self.version,
                self.runtime.provider,
                inputs,
                outputs,
                [it.decoded.request_id],
                [it.trace_id],
                [rows],
                [now - it.enqueued],
                ["OK" if err is None else err.reason],
                compute_s,
                time.time(),
                ["OK" if err is None else err.code.value],
                layout,
            )
        else:
            record = BatchRecord(
                model=self.name,
                version=self.version,
                provider=self.runtime.provider,
                inputs=inputs,
                outputs=outputs,
                request_ids=[it.decoded.request_id for it in batch],
                trace_ids=[it.trace_id for it in batch],
                row_counts=[it.decoded.rows for it in batch],
                latencies_s=[now - it.enqueued for it in batch],
                status=["OK" if it.error is None else it.error.reason for it in batch],
                compute_s=compute_s,
                codes=["OK" if it.error is None else it.error.code.value for it in batch],
                layout=layout,
            )
        if self.sync_log is not None:
            ticket = self.sync_log.append(record)
            for it in batch:
                it.ticket = ticket
        self.observers.publish(record)


class ModelExecutionFailed(InvalidArgument):
    """ONNX Runtime failed on the request's input. ``published``: the request's record, with
    its decoded inputs and this status, already went to the observers (and the log), so the
    refusal must not be recorded a second time."""

    published = False


def _execution_failed(exc: Exception) -> ModelExecutionFailed:
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ModelExecutionFailed(
        f"the model could not run on this input: {detail}", reason="MODEL_EXECUTION_FAILED"
    )


class ModelSlot:
    """Holds the current :class:`ServingModel`; replacing it is one atomic assignment."""

    def __init__(self, model: ServingModel | None = None) -> None:
        self.current = model

    def swap(self, model: ServingModel) -> ServingModel | None:
        """Serve ``model`` from now on; returns the one it replaced."""
        old, self.current = self.current, model
        return old
