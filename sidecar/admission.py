"""Where a sidecar's gRPC calls run, and the admission that sheds ModelInfer calls.

Standalone and managed sidecars build their gRPC server the same way (:func:`open_server`):
ModelInfer runs on the request threads of a :class:`RequestPool`, which admits a call only
while fewer than ``--max-queue-rows`` rows wait (in the batch queues and for a thread), and
the admin service (drift reports, label ingestion) on :data:`ADMIN_THREADS` threads of its own,
and everything else (health, metadata, reflection) on :data:`CONTROL_THREADS` threads that
neither inference nor a flood of label uploads ever holds, so it answers under any load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from modelplane.server.lifecycle import grpc_options
from sidecar.model import ModelSlot

#: Threads that answer the ModelInfer calls :meth:`RequestPool.admit` turns away.
SHED_THREADS = 2
#: Threads of the gRPC server for health, metadata and reflection: a few, never busy with
#: inference or the admin service.
CONTROL_THREADS = 4
#: Threads for the admin service (GetDriftReport, IngestLabels: a label upload may take a
#: while to store).
ADMIN_THREADS = 4


class _Threads(futures.ThreadPoolExecutor):
    """Request threads that count the calls handed to them and not yet running."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads, thread_name_prefix="oip")
        self._count = threading.Lock()
        #: Calls submitted that no thread has started yet.
        self.waiting = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._count:
            self.waiting += 1
        try:
            return super().submit(self._run, fn, args, kwargs)
        except BaseException:
            with self._count:
                self.waiting -= 1
            raise

    def _run(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._count:
            self.waiting -= 1
        return fn(*args, **kwargs)


def no_rows() -> int:
    """Rows waiting in batch queues before any model serves: none."""
    return 0


class RequestPool(futures.Executor):
    """The threads that run ModelInfer calls, resizable once the model is loaded, and the
    admission that keeps calls from queueing for them without bound.

    The listener opens before the model loads (health answers meanwhile), but how many request
    threads serve best depends on whether requests get batched, which warm-up decides: batched
    requests wait in threads of their own, unbatched ones only add GIL contention beyond a few.

    gRPC hands a call to a thread pool as soon as it arrives, and the pool queues what its
    threads cannot take yet: :meth:`admit` turns a ModelInfer call away (answered by a pool of
    :data:`SHED_THREADS` threads of its own) while ``max_waiting`` rows already wait, counting
    the rows ``queued_rows()`` says wait in batch queues (every version a managed sidecar
    serves) and each call not yet on a thread as one.
    """

    def __init__(
        self,
        threads: int,
        max_waiting: int = 0,
        queued_rows: Callable[[], int] = no_rows,
    ) -> None:
        self._threads = threads
        self._pool = _Threads(threads)
        self._lock = threading.Lock()
        self._max_waiting = max_waiting
        self._queued_rows = queued_rows
        self._routed: list[Any] = []
        self._shed_pool: futures.ThreadPoolExecutor | None = None

    def route(self, behavior: Any, shed: bool) -> None:
        """Run the gRPC method function ``behavior`` on these threads, or (``shed``) on the
        few that refuse the calls :meth:`admit` turns away."""
        if shed:
            if self._shed_pool is None:
                self._shed_pool = futures.ThreadPoolExecutor(
                    SHED_THREADS, thread_name_prefix="oip-shed"
                )
            behavior.experimental_thread_pool = self._shed_pool
            return
        with self._lock:
            behavior.experimental_thread_pool = self._pool
            self._routed.append(behavior)

    def admit(self) -> bool:
        """Whether one more ModelInfer call may wait (always, without ``max_waiting``)."""
        if not self._max_waiting:
            return True
        return self._pool.waiting + self._queued_rows() < self._max_waiting

    def resize(self, threads: int) -> None:
        """Serve new requests with ``threads`` threads (running ones finish where they are)."""
        if threads == self._threads:
            return
        with self._lock:
            self._pool = _Threads(threads)
            self._threads = threads
            for behavior in self._routed:
                behavior.experimental_thread_pool = self._pool
        # The old pool is not shut down: gRPC's polling thread may have read it from a routed
        # method just now, and submitting to a pool that was shut down would end that thread.
        # Its threads finish what they run and end once it is collected.

    @property
    def threads(self) -> int:
        """How many request threads serve new requests."""
        return self._threads

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._lock:
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pools = [self._pool] if self._shed_pool is None else [self._pool, self._shed_pool]
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def batch_queue_rows(slot: ModelSlot) -> Callable[[], int]:
    """The rows waiting in the batch queue of the model ``slot`` holds (standalone)."""

    def queued() -> int:
        model = slot.current
        return 0 if model is None else model.queued_rows

    return queued


def open_server(
    threads: int, max_waiting: int, queued_rows: Callable[[], int], reuse_port: bool
) -> tuple[grpc.Server, RequestPool, futures.Executor, list[Callable[[], None]]]:
    """A gRPC server (not started) whose default threads are :data:`CONTROL_THREADS` control
    threads, the :class:`RequestPool` for ModelInfer (register the OIP service with it:
    :func:`sidecar.servicer.add_to_server`), the :data:`ADMIN_THREADS` threads for the admin
    service (:func:`sidecar.admin.add_admin_to_server`), and the closers that end the pools."""
    pool = RequestPool(threads, max_waiting, queued_rows)
    control = futures.ThreadPoolExecutor(CONTROL_THREADS, thread_name_prefix="grpc")
    admin = futures.ThreadPoolExecutor(ADMIN_THREADS, thread_name_prefix="admin")
    server = grpc.server(control, options=grpc_options(reuse_port=reuse_port))
    return (
        server,
        pool,
        admin,
        [
            lambda: control.shutdown(wait=False),
            lambda: pool.shutdown(wait=False),
            lambda: admin.shutdown(wait=False),
        ],
    )
