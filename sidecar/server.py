"""Building, starting and stopping one sidecar server process.

:func:`start` opens the gRPC listener first (live, not yet ready), then loads and warms up
the model, and only then reports ready (gRPC health SERVING, ServerReady true). Stopping flips
health to NOT_SERVING and lets in-flight requests finish within the drain time.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry

from modelplane.profiles import profile_from_file
from modelplane.server.cpus import process_budget
from modelplane.server.lifecycle import (
    GrpcServerHandle,
    add_health_and_reflection,
    add_port,
    hold_stop_signals,
    on_stop_signals,
    run_closers,
    serve_metrics,
)
from modelplane.server.logging import export_write_errors
from modelplane.server.supervisor import hold_until_all_ready
from sidecar import runtime as rt
from sidecar.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from sidecar.admin import AdminServicer, add_admin_to_server
from sidecar.admission import batch_queue_rows, open_server
from sidecar.codec import Limits
from sidecar.metrics import NoMetrics, SidecarMetrics, dropped_records_counter, multiprocess
from sidecar.model import ModelSlot, ServingModel
from sidecar.observer_process import ObserverProcess, ObserverProcessError, offloaded
from sidecar.observers import Observer, ObserverHub
from sidecar.observing import Wiring, feature_names, observe
from sidecar.predlog import PredictionLogError, PredictionLogSettings
from sidecar.recording import check_log_columns
from sidecar.servicer import SERVICE_NAME, InferenceServicer, add_to_server
from sidecar.settings import SidecarSettings
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar")


@dataclass
class SidecarHandle:
    """A running sidecar: its port, the model slot, and how to stop it."""

    grpc: GrpcServerHandle
    servicer: InferenceServicer
    slot: ModelSlot
    provider: str = ""
    metrics_port: int | None = None
    #: The prediction log's and drift monitor's process (``--observer-mode process``), if any.
    observer_process: ObserverProcess | None = None
    closers: list[Any] = field(default_factory=list)
    #: Set by :meth:`fail`: NOT_SERVING for good.
    failed: bool = False
    #: Set by :meth:`stop_when_failed`.
    stop_on_failure: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Report not ready, serve on for the shutdown delay (:attr:`GrpcServerHandle.
        shutdown_delay`), drain in-flight requests for up to ``grace`` seconds, close."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        try:
            self.servicer.ready = False
            self.grpc.stop(grace)
            run_closers(self.closers)
        finally:
            self._stopped.set()

    def mark_ready(self) -> bool:
        """Report ready (ServerReady true, health SERVING) unless the sidecar failed or is
        stopping meanwhile (a failure during warm-up is not undone); whether it did."""
        with self._lock:
            if self.failed or self._stopping:
                return False
            self.servicer.ready = True
            self.grpc.mark_serving()
            return True

    def fail(self, error: BaseException) -> None:
        """Report NOT_SERVING for good (a failing prediction-log disk, an observer process
        that died), so that load balancers send traffic elsewhere. When predictions can no
        longer be logged (the log failed, or the observer process writing it ended), every
        ModelInfer is refused from now on (UNAVAILABLE, ``PREDICTION_LOG_FAILED``), in
        ``async`` durability as in ``sync``: an answer would have no record. A sidecar
        without a log (drift only) keeps answering."""
        unlogged = isinstance(error, PredictionLogError) or (
            isinstance(error, ObserverProcessError)
            and self.observer_process is not None
            and self.observer_process.log_dir is not None
        )
        if unlogged and self.servicer.log_failure is None:
            self.servicer.log_failure = error
        if isinstance(error, ObserverProcessError):
            log.error(
                "sidecar is NOT_SERVING: the observer process ended",
                error=str(error),
                hint="its last log lines say why; restart the sidecar",
            )
        else:
            log.error(
                "sidecar is NOT_SERVING: the prediction log failed",
                error=str(error),
                hint="check the log directory's disk (space, quota, file size limit, permissions)",
            )
        with self._lock:
            self.failed = True
            self.servicer.ready = False
            self.grpc.mark_not_serving()
            stop = self.stop_on_failure
        if stop:
            self._stop_failed()

    def stop_when_failed(self) -> None:
        """From now on (and now, if it failed already) a failure stops this process, which
        then exits 1: a worker of ``--workers N``, whose health alone would answer
        NOT_SERVING on some connections only; its supervisor then stops the other workers.
        Called once :func:`start` has returned, so that a stop never races the start-up."""
        with self._lock:
            self.stop_on_failure = True
            failed = self.failed
        if failed:
            self._stop_failed()

    def _stop_failed(self) -> None:
        log.error("worker stops: a failed worker stops the sidecar's other workers too")
        threading.Thread(target=self.stop, name="stop-on-failure", daemon=True).start()

    def wait(self) -> None:
        """Block until the server has stopped and closed everything."""
        self.grpc.wait()
        if self._stopping:
            self._stopped.wait()

    def stop_on_signals(self) -> None:
        """Drain and stop on SIGTERM/SIGINT, or at once for one held while the sidecar
        started (call from the main thread)."""

        def handler(signum: int) -> None:
            # The stop first: nothing the log line meets (a stderr that cannot be written)
            # may keep the signal from stopping the sidecar.
            threading.Thread(target=self.stop, name="shutdown", daemon=True).start()
            log.info(
                "draining",
                signal=signal.Signals(signum).name,
                delay_s=self.grpc.shutdown_delay,
                grace_s=self.grpc.grace_seconds,
            )

        on_stop_signals(handler)


def metrics_registry(settings: SidecarSettings) -> tuple[CollectorRegistry | None, bool]:
    """The registry the sidecar's metrics go to (None: metrics off) and whether this process
    serves it over HTTP (a worker of ``--workers N`` leaves that to its supervisor)."""
    if not (settings.worker and multiprocess()) and not settings.metrics_listen:
        return None, False
    registry = CollectorRegistry()
    export_write_errors(registry)
    return registry, not (settings.worker and multiprocess())


def log_feature_names(settings: SidecarSettings, signature: Signature) -> list[str] | None:
    """The feature names the prediction log will use (as :func:`sidecar.observing.observe`
    picks them), for the start-up check of its column names. Only a model with one
    ``[-1, F]`` input, a baseline and no ``--feature-names`` reads the baseline for it."""
    tabular = [t for t in signature.inputs if t.rank == 2 and t.tail is not None]
    if settings.feature_names is None and settings.baseline is not None and len(tabular) == 1:
        profile = profile_from_file(settings.baseline, label=settings.baseline_label)
        return feature_names(settings, signature, profile)
    return feature_names(settings, signature, None)


def start_services(server: grpc.Server, port: int, settings: SidecarSettings) -> GrpcServerHandle:
    """Add health and reflection for the OIP and admin services (registered already) to
    ``server``, start it, and return its handle with the drain and shutdown delay of
    ``settings``.

    A worker of ``--workers N`` keeps health NOT_SERVING, once warm, until its supervisor has
    seen every worker ready: connections reach any worker, so one saying SERVING while
    another still loads would pass a readiness probe that the next connections then fail.
    The listener is open from the start all the same (live, and NOT_SERVING rather than
    refused while loading)."""
    services = [SERVICE_NAME, ADMIN_SERVICE_NAME]
    health = add_health_and_reflection(server, services)
    handle = GrpcServerHandle(
        server,
        port,
        health,
        services,
        settings.drain_seconds,
        shutdown_delay=settings.shutdown_delay,
    )
    if settings.worker:
        handle.hold_serving()
        if not hold_until_all_ready(handle.release_serving):
            handle.release_serving()
    server.start()
    return handle


def bind_listener(server: grpc.Server, listen: str, close_pools: list[Any]) -> int:
    """:func:`~modelplane.server.lifecycle.add_port`, closing the pools opened for the server
    when it cannot bind, so that the process can exit at once."""
    try:
        return add_port(server, listen)
    except OSError:
        run_closers(close_pools)
        raise


def start(
    settings: SidecarSettings,
    observers: list[Observer] | None = None,
    log_settings: PredictionLogSettings | None = None,
) -> SidecarHandle:
    """Start a sidecar for ``settings`` and return once it is ready to serve.

    ``log_settings`` with a directory turns the prediction log on; ``settings.baseline``
    turns drift monitoring on. In managed mode (``settings.control_plane``) it returns a
    :class:`sidecar.managed.server.ManagedHandle` as soon as the listener is up; its
    ``wait_ready(timeout)`` blocks until the deployment's first champion serves.
    """
    if settings.managed:
        from sidecar.managed.server import start_managed

        return start_managed(settings, observers, log_settings)
    assert settings.model is not None
    slot = ModelSlot()
    servicer = InferenceServicer(slot)
    waits = (
        log_settings is not None
        and log_settings.dir is not None
        and log_settings.durability == "sync"
    )
    server, pool, admin, close_pools = open_server(
        settings.request_threads(waits, settings.may_batch),
        settings.max_queue_rows,
        batch_queue_rows(slot),
        reuse_port=settings.worker,
    )
    add_to_server(servicer, server, pool)
    add_admin_to_server(AdminServicer(slot), server, admin)
    port = bind_listener(server, settings.listen, close_pools)
    handle = SidecarHandle(start_services(server, port, settings), servicer, slot)
    handle.closers += close_pools
    try:
        runtime = rt.load_for(settings, settings.model)
        name = settings.served_name
        registry, serve = metrics_registry(settings)
        metrics: NoMetrics = NoMetrics()
        if registry is not None:
            metrics = SidecarMetrics(registry, name, settings.model_version, runtime.provider)
        if serve and settings.metrics_listen:
            httpd, handle.metrics_port = serve_metrics(settings.metrics_listen, registry)
            handle.closers.append(httpd.shutdown)
        if log_settings is not None and log_settings.dir is not None:
            check_log_columns(
                runtime.signature,
                log_feature_names(settings, runtime.signature),
                log_settings.exclude_features,
            )
        if offloaded(settings, log_settings):
            remote = ObserverProcess.start(
                settings, log_settings, runtime.signature, registry, handle.fail
            )
            handle.closers.append(remote.close)
            handle.observer_process = remote
            wiring = Wiring([remote], lossless=remote.log_dir is not None, drift=remote.drift)
            log_dir = remote.log_dir
        else:
            wiring = observe(settings, log_settings, runtime.signature, registry, handle.fail)
            if wiring.writer is not None:
                handle.closers.append(wiring.writer.close)
            log_dir = None if wiring.writer is None else wiring.writer.directory
        hub = ObserverHub(
            [*(observers or []), *wiring.observers],
            lossless=wiring.lossless,
            on_dropped=dropped_records_counter(registry, name),
        )
        hub.start()
        handle.closers.append(partial(_close_hub, hub, handle.observer_process))
        batch_rows, unbatched = rt.serving_batch_rows(settings, runtime)
        model = ServingModel(
            runtime,
            name=name,
            version=settings.model_version,
            limits=Limits.of(settings),
            max_batch_rows=batch_rows,
            max_delay=settings.max_queue_delay,
            max_queue_rows=settings.max_queue_rows,
            metrics=metrics,
            observers=hub,
            sync_log=wiring.sync_log,
            drift=wiring.drift,
        )
        pool.resize(settings.request_threads(waits, model.batcher is not None))
    except BaseException:
        handle.stop(0)
        raise
    slot.swap(model)
    handle.provider = runtime.provider
    serving = handle.mark_ready()
    log.info(
        "model ready",
        serving=serving,
        model=name,
        version=settings.model_version,
        provider=runtime.provider,
        batching=model.batcher is not None,
        batching_off=model.batching_off or unbatched,
        inputs=[f"{t.name}:{t.datatype}{list(t.shape)}" for t in runtime.signature.inputs],
        prediction_log=None if log_dir is None else str(log_dir),
        drift=wiring.drift is not None,
        observers="process" if handle.observer_process else "thread" if wiring.observers else None,
        cpu=process_budget().describe(),
        request_threads=pool.threads,
    )
    return handle


def tune_gc(young_threshold: int) -> None:
    """Set up Python's garbage collector for serving, once start-up is done (``0``: leave
    it as Python set it).

    Everything loaded so far (modules, the session, the signature) stays for the process's
    life: :func:`gc.freeze` takes it out of every later collection, so that a full collection
    walks only what serving created (in process, 68 ms before and under 1 ms after). A young
    generation of ``young_threshold`` allocations lets the records queued for the prediction
    log and drift die before a collection sees them, instead of being promoted and walked
    again by older collections (bench/README.md, "Python's garbage collector with the log
    on"). Request objects without cycles are freed by reference counting either way.
    """
    if not young_threshold:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    log.info(
        "garbage collector tuned",
        frozen_objects=gc.get_freeze_count(),
        thresholds=gc.get_threshold(),
    )


def announce(settings: SidecarSettings, port: int, **extra: Any) -> None:
    """Print the one stdout line (JSON) saying where the ready sidecar listens."""
    host = settings.listen.rpartition(":")[0]
    line = {"event": "sidecar ready", "address": f"{host}:{port}", "port": port, **extra}
    log.info("sidecar ready", address=line["address"], port=port, **extra)
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def serve_one(settings: SidecarSettings, log_settings: PredictionLogSettings | None = None) -> int:
    """Run one server process until SIGTERM/SIGINT; returns the exit code."""
    hold_stop_signals()
    handle = start(settings, log_settings=log_settings)
    handle.stop_on_signals()
    if settings.worker:
        handle.stop_when_failed()
    wait_ready = getattr(handle, "wait_ready", None)
    if wait_ready is not None:
        # Managed: announce only once the first champion serves (or give up when stopped).
        while not wait_ready(0.5):
            if handle._stopping:
                handle.wait()
                return _exit_code(handle)
    tune_gc(settings.gc_young_threshold)
    announce(
        settings,
        handle.port,
        metrics_port=handle.metrics_port,
        provider=handle.provider,
        pid=os.getpid(),
    )
    handle.wait()
    log.info("sidecar stopped")
    return _exit_code(handle)


def _exit_code(handle: SidecarHandle) -> int:
    """1 for a worker that stopped because it failed (its supervisor then stops the others),
    else 0: a single sidecar that failed stays up, NOT_SERVING, until it is stopped."""
    return 1 if handle.failed and handle.stop_on_failure else 0


def _close_hub(hub: ObserverHub, remote: ObserverProcess | None) -> None:
    """Close ``hub``; briefly when its observer process stopped reading: the hub's thread then
    waits on the full pipe until that process is killed, which its own closer (the next one)
    does."""
    hub.close(0.5 if remote is not None and remote.stalled else 5.0)
