"""Starting a managed sidecar: the control plane decides which versions serve.

:func:`start_managed` opens the gRPC listener at once (live, not ready), starts watching the
deployment and returns; the first desired state's champion is loaded in the background and
only then does the sidecar report ready (health SERVING, ServerReady true):
:meth:`ManagedHandle.wait_ready` blocks until then.

With ``--metrics-listen`` it serves the plain sidecar's Prometheus metrics, one series set per
loaded version under the deployment's name, and the managed ``modelplane_sidecar_*`` counters
(see :mod:`sidecar.metrics`); as a worker of
``--workers N`` it records them for the supervisor's merged endpoint instead.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from modelplane._client import read_pem
from modelplane.server.cpus import process_budget
from modelplane.server.lifecycle import serve_metrics
from modelplane.v1 import blobs_pb2_grpc, deployments_pb2_grpc
from sidecar.admin import AdminServicer, add_admin_to_server
from sidecar.admission import open_server
from sidecar.managed.artifacts import ArtifactCache, blob_downloader, temporary_cache
from sidecar.managed.labels import LabelIngestor, LabelLog, PredictionIndex
from sidecar.managed.manager import DeploymentManager
from sidecar.managed.observer import ManagedObserver
from sidecar.managed.peers import open_peer_endpoint
from sidecar.managed.reporter import Reporter
from sidecar.managed.servicer import ManagedServicer
from sidecar.managed.shadow import ShadowRunner
from sidecar.managed.versions import RoutingTable, VersionLoader
from sidecar.managed.watch import Watcher
from sidecar.metrics import ManagedMetrics, NoManagedMetrics
from sidecar.model import ModelSlot
from sidecar.observers import Observer, ObserverHub
from sidecar.predlog import PredictionLogSettings, open_prediction_log
from sidecar.recording import SyncLog
from sidecar.server import (
    SidecarHandle,
    bind_listener,
    metrics_registry,
    start_services,
)
from sidecar.servicer import add_to_server
from sidecar.settings import SidecarSettings

log = structlog.get_logger("modelplane.sidecar")

PRINCIPAL_METADATA_KEY = "x-modelplane-principal"
_CALL_TIMEOUT_S = 10.0
_DOWNLOAD_TIMEOUT_S = 600.0


@dataclass
class ManagedHandle(SidecarHandle):
    """A running managed sidecar (see :class:`SidecarHandle`) and its moving parts."""

    manager: Any = None
    watcher: Any = None
    reporter: Any = None
    observer: Any = None
    shadow: Any = None
    labels: Any = None
    cache_dir: Path | None = None
    replica: str = ""
    failed: bool = False

    def fail(self, error: BaseException) -> None:
        """Report NOT_SERVING for good (see :meth:`SidecarHandle.fail`)."""
        self.failed = True
        super().fail(error)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first desired state's champion serves; False on timeout."""
        return bool(self.manager.wait_ready(timeout))


def default_replica() -> str:
    """``host-pid-random``: a name of this process's own (a ``--replica`` name may be reused
    by the next process; report sequence numbers follow the clock so that is safe, see
    :mod:`sidecar.managed.reporter`)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def replica_name(settings: SidecarSettings) -> str:
    """This process's replica name: ``--replica`` (with the pid appended in a worker of
    ``--workers N``, each worker being a replica of its own), else :func:`default_replica`."""
    if not settings.replica:
        return default_replica()
    return f"{settings.replica}-{os.getpid()}" if settings.worker else settings.replica


#: HTTP/2 keepalive on the connections to the control plane: a ping after 20 s without
#: reading anything, also while no call is open, and the connection ends (its calls fail
#: UNAVAILABLE and are retried on a new one) when no answer comes within 10 s, so a connection
#: that died silently does not hold the watch or the reports for good. The control plane
#: accepts pings this often (``controlplane.server.PING_POLICY``).
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC core waits this long for a ping's answer (60 s unless set), keepalive's included.
    ("grpc.http2.ping_timeout_ms", 10_000),
]

#: How soon the channel tries to connect again after the control plane could not be reached:
#: 1 s at first, growing by 1.6x per failed attempt (with jitter) up to 3 s, within the
#: watcher's own backoff (at most 10 s, :class:`sidecar.managed.watch.Watcher`). gRPC's
#: default goes up to 120 s: after a minute's outage the sidecar took most of a minute more
#: to reconnect once the control plane was back, as every watch and report failed at once
#: while the channel waited. ``grpc.min_reconnect_backoff_ms`` is left alone: gRPC takes it
#: as the time one connection attempt may take (20 s), not as a backoff.
RECONNECT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 3_000),
]


def control_plane_channel(settings: SidecarSettings) -> grpc.Channel:
    """A channel to ``--control-plane`` on a connection of its own, never one that another
    channel of this process opened: TLS when a CA file (else the system's CAs) or a client
    certificate (mutual TLS) is given."""
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.use_local_subchannel_pool", 1),
        *KEEPALIVE_OPTIONS,
        *RECONNECT_OPTIONS,
    ]
    assert settings.control_plane is not None
    if settings.control_plane_tls_ca is not None or settings.control_plane_tls_cert is not None:
        root, private_key, chain = control_plane_tls_files(settings)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=private_key, certificate_chain=chain
        )
        return grpc.secure_channel(settings.control_plane, credentials, options=options)
    return grpc.insecure_channel(settings.control_plane, options=options)


def control_plane_tls_files(settings: SidecarSettings) -> tuple[bytes | None, ...]:
    """The CA bundle, client key and client certificate the control plane is reached with, as
    PEM (None for each not given). A file that cannot be read, is empty, holds no PEM block
    or no block of its kind (a certificate, a private key) is InvalidArgument naming its option
    and the file (reason UNREADABLE_TLS_FILE or INVALID_TLS_FILE): gRPC would take an empty CA
    bundle as none given and trust the system's CAs, and report any other bad file only as a
    control plane it cannot reach."""
    return (
        read_pem(settings.control_plane_tls_ca, "--control-plane-tls-ca file", holds="certificate"),
        read_pem(
            settings.control_plane_tls_key, "--control-plane-tls-key file", holds="private key"
        ),
        read_pem(
            settings.control_plane_tls_cert, "--control-plane-tls-cert file", holds="certificate"
        ),
    )


class _Connection:
    """A channel to the control plane, its stubs and the calls open on it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.deployments = deployments_pb2_grpc.DeploymentServiceStub(channel)
        self.blobs = blobs_pb2_grpc.BlobServiceStub(channel)
        self.calls = 0
        self.retired = False
        self.closed = False


class ControlPlane:
    """The control plane's DeploymentService and BlobService over one channel, which
    :meth:`renew` replaces by one on a new connection: the watcher renews it when its stream
    went silent, as the connection every call shares may have died with it.

    Calls started before a renewal go on on the old channel (a download may take minutes, and
    the renewal may have been needless): it is closed once they have ended, at the next
    renewal (so at most one old channel is kept: calls still open on it two renewals later
    end CANCELLED and are retried as after any failure) or at :meth:`close`."""

    def __init__(self, settings: SidecarSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._current = _Connection(control_plane_channel(settings))
        self._retired: _Connection | None = None
        self._closed = False

    def WatchDeployment(self, request: Any, **kwargs: Any) -> Any:
        connection = self._acquire()
        return self._streaming(connection, connection.deployments.WatchDeployment, request, kwargs)

    def ReportWindow(self, request: Any, **kwargs: Any) -> Any:
        connection = self._acquire()
        try:
            return connection.deployments.ReportWindow(request, **kwargs)
        finally:
            self._release(connection)

    def DownloadBlob(self, request: Any, **kwargs: Any) -> Any:
        connection = self._acquire()
        return self._streaming(connection, connection.blobs.DownloadBlob, request, kwargs)

    def _streaming(
        self, connection: _Connection, method: Any, request: Any, kwargs: dict[str, Any]
    ) -> Any:
        """Start a response-streaming call on ``connection``, counted open until it ends."""
        try:
            call = method(request, **kwargs)
        except BaseException:
            self._release(connection)
            raise
        # add_callback, not add_done_callback: that would hold the call, which then never
        # gets cancelled when dropped unfinished.
        if not call.add_callback(lambda: self._release(connection)):
            self._release(connection)
        return call

    def _acquire(self) -> _Connection:
        with self._lock:
            connection = self._current
            connection.calls += 1
            return connection

    def _release(self, connection: _Connection) -> None:
        with self._lock:
            connection.calls -= 1
            if not connection.retired or connection.calls > 0 or connection.closed:
                return
            connection.closed = True
            if self._retired is connection:
                self._retired = None
        # Possibly on the thread that runs the channel's callbacks: close it on another.
        threading.Thread(
            target=connection.channel.close, name="control-plane-close", daemon=True
        ).start()

    def renew(self) -> ControlPlane:
        """Open a new connection for every later call; the old one is closed once the calls
        open on it have ended, and the one it replaced before, if still open, at once."""
        with self._lock:
            if self._closed:
                return self
            old = self._current
            older, self._retired = self._retired, old
            old.retired = True
            self._current = _Connection(control_plane_channel(self._settings))
            left = old.calls
            close = [c for c in (older, old if left == 0 else None) if c and not c.closed]
            for connection in close:
                connection.closed = True
                if self._retired is connection:
                    self._retired = None
        log.info("opened a new connection to the control plane", calls_left_on_the_old_one=left)
        for connection in close:
            connection.channel.close()
        return self

    def close(self) -> None:
        """Close every channel, ending the calls still open."""
        with self._lock:
            self._closed = True
            close = [c for c in (self._current, self._retired) if c is not None and not c.closed]
            for connection in close:
                connection.closed = True
            self._retired = None
        for connection in close:
            connection.channel.close()


def _cache_dir(
    settings: SidecarSettings, log_settings: PredictionLogSettings | None
) -> tuple[Path, Callable[[], None] | None]:
    """The artifact cache folder, and the function removing it when it is temporary."""
    if settings.cache_dir is not None:
        return settings.cache_dir, None
    if log_settings is not None and log_settings.dir is not None:
        return Path(log_settings.dir) / "cache", None
    return temporary_cache()


def start_managed(
    settings: SidecarSettings,
    observers: list[Observer] | None = None,
    log_settings: PredictionLogSettings | None = None,
) -> ManagedHandle:
    """Start a managed sidecar; it becomes ready once the first champion is loaded."""
    name = settings.deployment_id
    replica = replica_name(settings)
    logging_on = log_settings is not None and log_settings.dir is not None
    sync = logging_on and log_settings is not None and log_settings.durability == "sync"
    slot = ModelSlot()
    # Versions come and go, each with its own batch size: keep threads for batching unless
    # batching is off for all of them.
    request_threads = settings.request_threads(sync, settings.may_batch)
    manager_box: list[DeploymentManager] = []
    # ModelInfer on request threads of its own, admitted while fewer than --max-queue-rows
    # rows wait (in every loaded version's batch queue and for a thread); the admin service
    # (drift reports, label ingestion) on threads of its own; health and metadata on control
    # threads that neither ever holds.
    server, pool, admin, close_pools = open_server(
        request_threads,
        settings.max_queue_rows,
        lambda: manager_box[0].queued_rows() if manager_box else 0,
        reuse_port=settings.worker,
    )
    port = bind_listener(server, settings.listen, close_pools)
    control_plane = ControlPlane(settings)
    metadata = [(PRINCIPAL_METADATA_KEY, f"sidecar-{name}")]
    if settings.control_plane_token:
        metadata.append(("authorization", f"Bearer {settings.control_plane_token}"))
    cache_dir, remove_cache = _cache_dir(settings, log_settings)
    cache = ArtifactCache(cache_dir, blob_downloader(control_plane, metadata, _DOWNLOAD_TIMEOUT_S))

    closers: list[Any] = [control_plane.close, *close_pools]
    if remove_cache is not None:
        closers.append(remove_cache)
    registry, serve = metrics_registry(settings)
    metrics_port = None
    if serve and settings.metrics_listen:
        try:
            httpd, metrics_port = serve_metrics(settings.metrics_listen, registry)
        except BaseException:
            for close in reversed(closers):
                close()
            raise
        closers.append(httpd.shutdown)
    managed_metrics = NoManagedMetrics() if registry is None else ManagedMetrics(registry, name)
    writer = None
    handle_box: list[ManagedHandle] = []
    if logging_on:
        assert log_settings is not None
        writer = open_prediction_log(
            log_settings,
            registry=registry,
            on_failure=lambda err: handle_box[0].fail(err) if handle_box else None,
        )
        closers.append(writer.close)
    label_log = None
    if log_settings is not None and log_settings.dir is not None:
        label_log = LabelLog(Path(log_settings.dir), rotate_age=log_settings.rotate_age)
    if label_log is not None:
        closers.append(label_log.close)
    reporter = Reporter(
        lambda request: control_plane.ReportWindow(
            request, metadata=metadata, timeout=reporter.call_timeout()
        ),
        call_timeout=_CALL_TIMEOUT_S,
        metrics=managed_metrics,
    )
    closers.append(reporter.stop)
    index = PredictionIndex(settings.label_index_rows)
    shadow_box: list[ShadowRunner] = []
    observer = ManagedObserver(
        name,
        replica,
        tables=lambda: manager_box[0].table,
        index=index,
        emit=reporter.emit,
        writer=writer,
        log_batches=not sync,
        extra=observers or (),
        dropped=lambda: shadow_box[0].take_dropped(),
        metrics=managed_metrics,
    )
    closers.append(observer.flush)
    # Lossless with or without the prediction log: the window reports must count every
    # request answered (the control plane merges replicas' counts exactly and a rollout's
    # guards compare them), so when the observer falls behind, requests wait for room in the
    # hub's bounded buffer rather than vanish from the reports.
    hub = ObserverHub([observer], lossless=True)
    closers.append(hub.close)
    shadow = ShadowRunner(hub.publish, capacity=settings.shadow_queue)
    shadow_box.append(shadow)
    closers.append(shadow.close)
    sync_logs = (
        (lambda names, shapes: SyncLog(writer, names, shapes=shapes))
        if sync and writer is not None
        else None
    )
    loader = VersionLoader(settings, cache, hub, sync_logs, registry)
    manager = DeploymentManager(loader, name)
    manager_box.append(manager)
    servicer = ManagedServicer(slot, manager, shadow, logged=writer is not None)
    labels = LabelIngestor(index, observer, label_log)
    if settings.worker and settings.peers_dir is not None:
        try:
            endpoint = open_peer_endpoint(settings.peers_dir, labels)
        except BaseException:
            for close in reversed(closers):
                close()
            raise
        # Closed before the observer and the reporter (closers run last first): no other
        # worker joins labels here once its counts could no longer be reported.
        closers.append(endpoint.close)
        labels.peers = endpoint.peers
    add_to_server(servicer, server, pool)
    add_admin_to_server(AdminServicer(slot, labels=labels), server, admin)
    handle = ManagedHandle(
        start_services(server, port, settings),
        servicer,
        slot,
        metrics_port=metrics_port,
        closers=closers,
        manager=manager,
        reporter=reporter,
        observer=observer,
        shadow=shadow,
        labels=labels,
        cache_dir=cache_dir,
        replica=replica,
    )
    handle_box.append(handle)

    def on_table(table: RoutingTable) -> None:
        slot.swap(table.champion.model)
        if not servicer.ready and not handle._stopping and not handle.failed:
            servicer.ready = True
            handle.grpc.mark_serving()
            handle.provider = table.champion.model.runtime.provider
            log.info("sidecar ready", deployment=name, champion=table.champion.label)

    manager._on_table = on_table
    watcher = Watcher(
        control_plane,
        f"deployments/{name}",
        replica,
        manager.offer,
        metadata,
        renew=control_plane.renew,
        metrics=managed_metrics,
        address=settings.control_plane,
        serving=lambda: manager.ready,
    )
    handle.watcher = watcher
    closers.append(watcher.stop)
    closers.append(manager.stop)
    try:
        hub.start()
        shadow.start()
        reporter.start()
        manager.start()
        watcher.start()
    except BaseException:
        handle.stop(0)
        raise
    log.info(
        "managed sidecar started",
        deployment=name,
        control_plane=settings.control_plane,
        replica=replica,
        port=port,
        metrics_port=metrics_port,
        cache_dir=str(cache_dir),
        prediction_log=None if writer is None else str(writer.directory),
        cpu=process_budget().describe(),
        request_threads=request_threads,
    )
    return handle
