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

from modelplane.errors import ModelplaneError
from sidecar.codec import decode
from sidecar.observers import BatchRecord

log = structlog.get_logger("modelplane.sidecar.shadow")

Array = np.ndarray[Any, Any]

#: Bytes that queued shadow jobs may hold at most (requests and champion outputs).
MAX_QUEUED_BYTES = 64 << 20


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
    """

    record: BatchRecord | None
    #: The champion version (a LoadedVersion) whose answers were copied.
    champion: Any
    champion_outputs: dict[str, Array]
    errors: int = 0
    #: The shadow version (a LoadedVersion; ``record.version`` is its label).
    shadow: Any = None


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
        groups: dict[Any, list[tuple[ShadowJob, Any]]] = {}
        undecodable = []
        for job in jobs:
            shadow = job.shadow.model
            try:
                decoded = decode(job.request, shadow.signature, shadow.limits)
            except Exception as exc:
                if not isinstance(exc, ModelplaneError):
                    log.warning("shadow copy could not be decoded", error=str(exc))
                undecodable.append(job)
                continue
            key = (id(job.shadow), id(job.champion), decoded.key)
            groups.setdefault(key, []).append((job, decoded))
        self._count_errors(undecodable)
        for members in groups.values():
            shadow = members[0][0].shadow.model
            batched = (
                shadow.signature.batchable and members[0][1].key is not None and len(members) > 1
            )
            # Copies that cannot share a session call (a model whose answers change when
            # requests are stacked, see sidecar.batch_check) run one by one; one that fails
            # leaves the others' results standing.
            for part in [members] if batched else [[m] for m in members]:
                try:
                    self._run_part(part)
                except Exception as exc:
                    log.warning("shadow run failed", error=str(exc))
                    self._count_errors([job for job, _ in part])

    def _run_part(self, part: list[tuple[ShadowJob, Any]]) -> None:
        """One session call of the shadow on ``part``'s rows, published with the champion's
        answers for the same rows."""
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
        self._publish(ShadowRecord(record, first_job.champion, champion, 0, first_job.shadow))


def _stack(outputs: list[dict[str, Array]]) -> dict[str, Array]:
    if len(outputs) == 1:
        return outputs[0]
    names = [n for n in outputs[0] if all(n in o for o in outputs)]
    try:
        return {n: np.concatenate([o[n] for o in outputs]) for n in names}
    except ValueError:
        return {}
