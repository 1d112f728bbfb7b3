"""Shadow inference: the candidate answers copies of champion requests, off the response path.

The request thread only puts a job on a bounded queue (a full queue drops the copy and counts
it), after the champion's answer is ready; it never waits on the shadow. The queue is bounded
in jobs and in bytes (each job holds the request and the champion's outputs), and a queued
job counts as a request in flight on the shadow version, so that a version leaving the
routing table is not released while copies for it still wait. One worker thread
takes everything queued at once, decodes the copies against the shadow version's signature,
runs requests with compatible tensors as one session call, and publishes a
:class:`ShadowRecord` to the observer hub, where the comparison and the prediction log pick
it up. A shadow failure is counted, never seen by the client, and never stops the worker.

As on the serving path (:mod:`sidecar.model`), copies that ran as one call and failed run
again one by one, so that only the copies that fail on their own count as errors: the
shadow's error rate is the share of requests the candidate fails, whatever the load. The
reruns are part of the worker's round, so they count against its budget. Each failed copy is
published as a refusal (INVALID_ARGUMENT, ``MODEL_EXECUTION_FAILED`` and the message, or the
decoding error) with its inputs, which the prediction log keeps under arm ``shadow``; the
sidecar's log says so at the first failure and then at most once per
:data:`FAILURE_WARNING_S`, with the count since its last line.

Every job leaves the queue through the same accounting (its bytes and its in-flight count on
the shadow version go), whether it ran, failed or was given up: :meth:`ShadowRunner.close`
refuses new jobs, lets the worker run what is queued without resting, and gives up (counts
as dropped) what it has not run by the timeout.

The worker spends at most ``budget`` of wall time working (it rests in proportion after each
round), so the shadow cannot take more than that share of a core from the champion; copies
that arrive while it rests fill the queue and are dropped and counted, which samples the
traffic down to what the budget allows.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from modelplane.errors import Internal, ModelplaneError
from sidecar.codec import Decoded, decode
from sidecar.model import _execution_failed
from sidecar.observers import BatchRecord, RejectedRecord
from sidecar.recording import rejected_inputs, tabular_column_names

log = structlog.get_logger("modelplane.sidecar.shadow")

Array = np.ndarray[Any, Any]

#: Bytes that queued shadow jobs may hold at most (requests and champion outputs).
MAX_QUEUED_BYTES = 64 << 20
#: The least time between two warnings about failed shadow copies.
FAILURE_WARNING_S = 60.0


@dataclass(slots=True)
class ShadowJob:
    """A champion-answered request to run again on the shadow version."""

    request: Any
    champion: Any  # LoadedVersion
    shadow: Any  # LoadedVersion
    outputs: dict[str, Array]
    trace_id: str
    queued_at: float
    #: Bytes the job holds (set when queued).
    size: int = 0


@dataclass(slots=True)
class ShadowRecord:
    """The shadow's answers to some copied requests, with the champion's for comparison.

    ``record`` is the shadow run (``version`` the shadow's); ``champion_outputs`` holds the
    champion's outputs for the same rows, stacked alike, ``errors`` the copies that failed.
    A record of one failed copy has no run, and ``failed`` its refusal for the prediction log.
    """

    record: BatchRecord | None
    #: The champion version (a LoadedVersion) whose answers were copied.
    champion: Any
    champion_outputs: dict[str, Array]
    errors: int = 0
    #: The shadow version (a LoadedVersion; ``record.version`` is its label).
    shadow: Any = None
    #: The failed copy (its status, message and inputs as decoded), when this record is one.
    failed: RejectedRecord | None = None

    @property
    def inputs(self) -> dict[str, Array]:
        """The failed copy's inputs (none otherwise), which the hub's byte bound counts."""
        return {} if self.failed is None else self.failed.inputs


class ShadowRunner:
    """A bounded queue of shadow jobs and the worker that runs them."""

    def __init__(
        self,
        publish: Any,
        capacity: int = 256,
        max_rows: int = 64,
        budget: float = 0.05,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self._publish = publish
        self._budget = min(max(budget, 0.001), 1.0)
        self._stopping = threading.Event()
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(capacity)
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        #: Bytes held by queued (and running) jobs.
        self.queued_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Copies dropped because the queue was full (read and reset by the comparison).
        self.dropped = 0
        self.completed = 0
        #: Copies that failed (counted as shadow errors), for the throttled warning.
        self.failures = FailureWarnings()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def submit(self, job: ShadowJob) -> bool:
        """Queue ``job`` without waiting; False (and counted) when the queue is full, in
        jobs or in bytes, or once the runner is closed."""
        job.size = job.request.ByteSize() + sum(a.nbytes for a in job.outputs.values())
        with self._lock:
            if self._closed or self.queued_bytes + job.size > self._max_bytes:
                self.dropped += 1
                return False
            self.queued_bytes += job.size
            job.shadow.enter()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                job.shadow.leave()
                self.queued_bytes -= job.size
                self.dropped += 1
                return False
        return True

    def _done(self, jobs: list[ShadowJob]) -> None:
        """Jobs run (or given up): their bytes and their versions' in-flight counts go."""
        for job in jobs:
            job.shadow.leave()
        with self._lock:
            self.queued_bytes -= sum(job.size for job in jobs)

    def take_dropped(self) -> int:
        """Drops since the last call."""
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        return dropped

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs and stop the worker after what is queued (it no longer rests);
        what it has not run within ``timeout`` is given up, and counted as dropped."""
        with self._lock:
            self._closed = True
        self._stopping.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        self._drain()
        if self._thread is not None and self._thread.is_alive():
            # The worker missed the end mark (the queue was full): the queue is empty now.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _drain(self) -> None:
        """Give up the jobs still queued: their bytes and in-flight counts go."""
        given_up = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                given_up.append(job)
        if given_up:
            self._done(given_up)
            with self._lock:
                self.dropped += len(given_up)

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                jobs = [first]
                end = False
                while len(jobs) < self._max_rows:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        end = True
                        break
                    jobs.append(job)
                started = time.perf_counter()
                try:
                    self._work(jobs)
                except Exception:
                    # One round's failure never stops the worker (its jobs are done with):
                    # they count as shadow errors, if the hub takes the count.
                    log.exception("shadow jobs failed", jobs=len(jobs))
                    with contextlib.suppress(Exception):
                        self._count_errors(jobs)
                if end:
                    return
                busy = time.perf_counter() - started
                if self._budget < 1.0 and not self._stopping.is_set():
                    self._stopping.wait(busy * (1.0 / self._budget - 1.0))
        finally:
            # Nothing runs jobs from here on: refuse new ones, give up those still queued.
            with self._lock:
                self._closed = True
            self._drain()
            self.failures.flush()

    def _count_errors(self, jobs: list[ShadowJob]) -> None:
        """Publish ``jobs`` as failed copies, one count per champion and shadow pair."""
        failed: dict[tuple[int, int], list[Any]] = {}
        for job in jobs:
            pair = failed.setdefault(
                (id(job.champion), id(job.shadow)), [job.champion, job.shadow, 0]
            )
            pair[2] += 1
        for champion, shadow, count in failed.values():
            self._publish(ShadowRecord(None, champion, {}, count, shadow))

    def _work(self, jobs: list[ShadowJob]) -> None:
        try:
            self._run_jobs(jobs)
        finally:
            self._done(jobs)

    def _run_jobs(self, jobs: list[ShadowJob]) -> None:
        groups: dict[Any, list[tuple[ShadowJob, Decoded]]] = {}
        for job in jobs:
            shadow = job.shadow.model
            try:
                decoded = decode(job.request, shadow.signature, shadow.limits)
            except Exception as exc:
                self._failed(job, None, exc)
                continue
            key = (id(job.shadow), id(job.champion), decoded.key)
            groups.setdefault(key, []).append((job, decoded))
        for members in groups.values():
            shadow = members[0][0].shadow.model
            batched = (
                shadow.signature.batchable and members[0][1].key is not None and len(members) > 1
            )
            # Copies that cannot share a session call (a model whose answers change when
            # requests are stacked, see sidecar.batch_check) run one by one, and so do the
            # copies of a call that failed: one that fails leaves the others' results standing.
            if batched and self._ran_together(members):
                continue
            for job, decoded in members:
                try:
                    record = self._run_part([(job, decoded)])
                except Exception as exc:
                    self._failed(job, decoded, exc)
                    continue
                self._publish(record)

    def _ran_together(self, members: list[tuple[ShadowJob, Decoded]]) -> bool:
        """Run ``members`` as one session call and publish it; False when the call failed
        (then none of them is counted yet)."""
        try:
            record = self._run_part(members)
        except Exception:
            return False
        self._publish(record)
        return True

    def _failed(self, job: ShadowJob, decoded: Decoded | None, exc: Exception) -> None:
        """Publish one failed copy: a shadow error, with its refusal for the prediction log
        (``decoded`` None: it could not be decoded against the shadow's signature)."""
        shadow = job.shadow.model
        signature = shadow.signature
        if decoded is not None:
            err: ModelplaneError = _execution_failed(exc)
            inputs = {
                name: array
                for name, array in decoded.arrays.items()
                if (spec := signature.input(name)) is not None and spec.per_row
            }
        else:
            err = (
                exc
                if isinstance(exc, ModelplaneError)
                else Internal(f"the copy could not be decoded for the shadow: {exc}")
            )
            inputs = rejected_inputs(
                job.request, shadow.name, shadow.version, signature, shadow.limits
            )
        self.failures.note(err)
        refusal = RejectedRecord(
            model=shadow.name,
            version=shadow.version,
            request_id=job.request.id,
            trace_id=job.trace_id,
            code=err.code.value,
            reason=err.reason,
            message=err.message,
            latency_s=time.monotonic() - job.queued_at,
            inputs=inputs,
            column_names=tabular_column_names(signature, inputs) if inputs else None,
        )
        self._publish(ShadowRecord(None, job.champion, {}, 1, job.shadow, refusal))

    def _run_part(self, part: list[tuple[ShadowJob, Decoded]]) -> ShadowRecord:
        """One session call of the shadow on ``part``'s rows, with the champion's answers for
        the same rows, to publish."""
        first_job, first = part[0]
        shadow = first_job.shadow.model
        runtime = shadow.runtime
        names = shadow.signature.output_names
        start = time.perf_counter()
        parts = {n: [d.arrays[n] for _, d in part] for n in first.arrays}
        results, feeds = runtime.run_rows(names, parts, keep_inputs=True)
        elapsed = time.perf_counter() - start
        now = time.monotonic()
        champion = _stack([job.outputs for job, _ in part])
        record = BatchRecord(
            model=shadow.name,
            version=shadow.version,
            provider=runtime.provider,
            inputs=feeds,
            outputs=dict(zip(names, results, strict=True)),
            request_ids=[d.request_id for _, d in part],
            trace_ids=[job.trace_id for job, _ in part],
            row_counts=[d.rows for _, d in part],
            latencies_s=[now - job.queued_at for job, _ in part],
            status=["OK"] * len(part),
            compute_s=elapsed,
        )
        self.completed += len(part)
        return ShadowRecord(record, first_job.champion, champion, 0, first_job.shadow)


def _stack(outputs: list[dict[str, Array]]) -> dict[str, Array]:
    if len(outputs) == 1:
        return outputs[0]
    names = [n for n in outputs[0] if all(n in o for o in outputs)]
    try:
        return {n: np.concatenate([o[n] for o in outputs]) for n in names}
    except ValueError:
        return {}


class FailureWarnings:
    """Failed shadow copies, warned about at the first and then at most once per
    :data:`FAILURE_WARNING_S`, each line with the count since the last one and the latest
    error (one line per failure would flood the log of a sidecar whose candidate fails)."""

    def __init__(self) -> None:
        #: Copies that failed so far.
        self.total = 0
        self._warned = 0
        self._warned_at: float | None = None
        self._last: ModelplaneError | None = None

    def note(self, err: ModelplaneError) -> None:
        """One copy failed with ``err``."""
        self.total += 1
        self._last = err
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= FAILURE_WARNING_S:
            self._warn(now)

    def flush(self) -> None:
        """Say how many copies failed since the last line, if any did (the worker stops)."""
        if self.total > self._warned:
            self._warn(time.monotonic())

    def _warn(self, now: float) -> None:
        err = self._last
        assert err is not None
        log.warning(
            "shadow copies failed",
            failed=self.total - self._warned,
            total=self.total,
            reason=err.reason,
            error=err.message,
            hint="each counts in the shadow's errors; a prediction log keeps each with its "
            "inputs (modelplane logs read DIR --arm shadow); later failures are logged "
            f"at most once per {FAILURE_WARNING_S:.0f}s",
        )
        self._warned = self.total
        self._warned_at = now
