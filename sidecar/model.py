"""The served model: one ORT runtime with its signature, batcher, metrics and observers.

Everything that belongs to one model version lives in one :class:`ServingModel`, held by a
:class:`ModelSlot`, so a later version can replace it atomically while requests that already
hold the old one finish on it.

When ONNX Runtime fails on a request that passed validation, the failure is the model's
reaction to those values (an index out of range, say), so the request is answered
INVALID_ARGUMENT with reason ``MODEL_EXECUTION_FAILED``; a batch that fails is rerun request
by request so that only the request that caused it gets the error.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import structlog

from modelplane.errors import InvalidArgument, ModelplaneError, NotFound
from sidecar.batcher import Batcher, Item
from sidecar.codec import Decoded, Limits, decode
from sidecar.metrics import NoMetrics
from sidecar.observers import BatchRecord, ObserverHub
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
    ) -> None:
        self.runtime = runtime
        self.signature = runtime.signature
        self.name = name
        self.version = version
        self.limits = limits
        self.metrics = metrics or NoMetrics()
        self.observers = observers or ObserverHub()
        self._order = {n: i for i, n in enumerate(self.signature.output_names)}
        self.batcher: Batcher | None = None
        if max_batch_rows > 1 and self.signature.batchable:
            self.batcher = Batcher(
                self._execute,
                max_rows=max_batch_rows,
                max_delay=max_delay,
                max_queue_rows=max_queue_rows,
                on_queue_rows=self.metrics.queue_rows,
            )

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
            item = Item(decoded, None, None, trace_id)
            item.started = item.enqueued
            self._execute([item])
        else:
            item = Item(decoded, deadline, context, trace_id)
            batcher.submit(item)
            if item.error is None:
                self.metrics.queued(item.started - item.enqueued)
        if item.error is not None:
            raise item.error
        return decoded.outputs, item.result  # type: ignore[no-any-return]

    def _execute(self, batch: list[Item]) -> None:
        """Run ``batch`` as one session call and give each item its rows of every output."""
        if len(batch) == 1:
            self._run_one(batch[0])
            return
        wanted = sorted(
            {n for it in batch for n in it.decoded.outputs}, key=self._order.__getitem__
        )
        total = sum(it.decoded.rows for it in batch)
        feeds = {
            name: np.concatenate([it.decoded.arrays[name] for it in batch])
            for name in batch[0].decoded.arrays
        }
        start = time.perf_counter()
        try:
            results = self.runtime.run(wanted, feeds)
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
        if self.observers.active:
            self._publish(batch, feeds, by_name, elapsed)

    def _run_one(self, item: Item) -> None:
        decoded: Decoded = item.decoded
        start = time.perf_counter()
        try:
            results = self.runtime.run(list(decoded.outputs), decoded.arrays)
        except Exception as exc:
            item.error = _execution_failed(exc)
            log.warning("model execution failed", request_id=decoded.request_id, error=str(exc))
            if self.observers.active:
                self._publish([item], decoded.arrays, {}, time.perf_counter() - start)
            return
        elapsed = time.perf_counter() - start
        self.metrics.batch(decoded.rows, elapsed)
        item.result = results
        if self.observers.active:
            self._publish(
                [item], decoded.arrays, dict(zip(decoded.outputs, results, strict=True)), elapsed
            )

    def _publish(
        self,
        batch: list[Item],
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: dict[str, np.ndarray[Any, Any]],
        compute_s: float,
    ) -> None:
        now = time.monotonic()
        self.observers.publish(
            BatchRecord(
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
            )
        )


def _execution_failed(exc: Exception) -> ModelplaneError:
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return InvalidArgument(
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
