"""Health, reflection, the metrics listener, and graceful shutdown of a gRPC server."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

log = structlog.get_logger("modelplane.server")

#: The signals a server stops on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Stop signals that arrived while the server was starting (see :func:`hold_stop_signals`).
_pending: list[int] = []


def hold_stop_signals() -> None:
    """Until a server's stop handlers are installed, remember SIGTERM/SIGINT instead of dying
    of them: a signal that arrives while the server starts (as soon as it says it serves, say)
    then stops it gracefully once it has started. Call from the main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: _pending.append(signum))


def on_stop_signals(handler: Callable[[int], None]) -> None:
    """Call ``handler(signum)`` on SIGTERM/SIGINT from now on, and at once for one that
    arrived while they were held. Call from the main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: handler(signum))
    held, _pending[:] = list(_pending), []
    if held:
        handler(held[0])


#: Clients (tritonclient among them) raise their limits to 2 GiB - 1; servers match that.
MAX_MESSAGE_BYTES = 2**31 - 1


def grpc_options(
    *, reuse_port: bool = False, max_receive_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[str, Any]]:
    """Server options: message limits raised to what clients send, and SO_REUSEPORT only for
    processes meant to share a port (elsewhere a second server on the port must fail).

    gRPC reads a whole request message before any interceptor sees it, unauthenticated
    callers' included: a server whose requests are small passes ``max_receive_bytes`` so that
    a larger one is refused (RESOURCE_EXHAUSTED) before it is decoded and handled. (The
    transport still receives it to its end first: grpc/grpc#43012.)"""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def add_health_and_reflection(
    server: grpc.Server, service_names: Iterable[str]
) -> health.HealthServicer:
    """Register grpc.health.v1 (every service NOT_SERVING until told) and server reflection."""
    names = list(service_names)
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *names]:
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return servicer


def set_serving(
    servicer: health.HealthServicer, service_names: Iterable[str], serving: bool
) -> None:
    """Flip the overall and per-service health status."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        servicer.set(name, status)


def add_port(server: grpc.Server, listen: str, credentials: Any = None) -> int:
    """Add ``listen`` to ``server`` (not started), with TLS when ``credentials`` are given;
    the bound port. When it cannot be bound (the port in use, a host that is not this
    machine's), gRPC logs the reason and raises RuntimeError (older versions returned 0):
    OSError("cannot listen on ADDRESS") then, without an errno."""
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return int(port)


def _metrics_bind_error(listen: str, exc: OSError) -> OSError:
    # Named by its option: the bare "Address already in use" does not say which listener.
    return OSError(exc.errno, f"--metrics-listen {listen}: {exc.strerror}")


def serve_metrics(listen: str, registry: CollectorRegistry | None = None) -> tuple[Any, int]:
    """Start the Prometheus HTTP listener on ``HOST:PORT``; returns (server, bound port). An
    address it cannot bind raises OSError whose message starts ``--metrics-listen ADDRESS:``."""
    host, _, port = listen.rpartition(":")
    kwargs: dict[str, Any] = {"registry": registry} if registry is not None else {}
    try:
        httpd, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", **kwargs)
    except OSError as exc:
        raise _metrics_bind_error(listen, exc) from None
    return httpd, httpd.server_port


def check_metrics_listen(listen: str) -> None:
    """Bind ``listen`` as :func:`serve_metrics` would and let it go at once, raising as it
    does: for a supervisor that opens the endpoint only once its workers are ready, so that
    they are not started for nothing. A port taken in between still fails then."""
    host, _, port = listen.rpartition(":")
    if not int(port):
        return
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]") or "0.0.0.0", int(port), type=socket.SOCK_STREAM
        )[0]
    except OSError:
        return  # a name that does not resolve fails as it does without the check
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server
        try:
            sock.bind(address)
        except OSError as exc:
            raise _metrics_bind_error(listen, exc) from None


def run_closers(closers: list[Any]) -> None:
    """Call ``closers`` last first (the reverse of the order they were opened in); one that
    fails is logged and the rest still run."""
    for close in reversed(closers):
        try:
            close()
        except Exception:
            log.exception("error while closing", closer=repr(close))


@dataclass
class GrpcServerHandle:
    """A started gRPC server with its health servicer, and how to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    grace_seconds: float = 10.0
    closers: list[Any] = field(default_factory=list)
    #: Called when the shutdown delay ends, before the grace period (to end long-lived streams
    #: and waits); one that fails is logged and the stop goes on.
    on_stop: list[Any] = field(default_factory=list)
    #: Seconds between NOT_SERVING and closing the listener, during which calls are still
    #: served: load balancers and Kubernetes endpoints see the pod leave before its port
    #: closes (they poll health every few seconds).
    shutdown_delay: float = 0.0
    _stopped: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)
    #: What :meth:`mark_serving` / :meth:`mark_not_serving` last asked for, and whether
    #: :meth:`hold_serving` keeps health from saying so yet.
    _wanted: bool = False
    _held: bool = False
    _health_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def mark_serving(self) -> None:
        """Health SERVING (unless held, see :meth:`hold_serving`, or stopping)."""
        with self._health_lock:
            self._wanted = True
            if not self._held and not self._stopped.is_set():
                set_serving(self.health, self.service_names, True)

    def mark_not_serving(self) -> None:
        """Health NOT_SERVING, also once a hold is released."""
        with self._health_lock:
            self._wanted = False
            set_serving(self.health, self.service_names, False)

    def hold_serving(self) -> None:
        """Keep health NOT_SERVING, whatever :meth:`mark_serving` asks, until
        :meth:`release_serving`: for one of several processes sharing a port, whose health
        is answered per connection, so that none says SERVING while another still loads."""
        with self._health_lock:
            self._held = True

    def release_serving(self) -> None:
        """End :meth:`hold_serving`: health SERVING now if :meth:`mark_serving` asked for it
        (and nothing asked for NOT_SERVING since)."""
        with self._health_lock:
            self._held = False
            if self._wanted and not self._stopped.is_set():
                set_serving(self.health, self.service_names, True)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, still serving for the shutdown delay, then let unary calls
        finish and end streams after the grace."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.mark_not_serving()
        delay = self.shutdown_delay
        if delay > 0:
            log.info("NOT_SERVING; serving on until the shutdown delay ends", delay_s=delay)
            time.sleep(delay)
        for hook in self.on_stop:
            try:
                hook()
            except Exception:  # the server must still stop
                log.exception("error while stopping", hook=repr(hook))
        # Calls gRPC core holds, not yet handed to a thread (a burst just now), are answered
        # CANCELLED here without running (grpc/grpc#41785); so are calls still running when
        # the grace ends.
        self.server.stop(self.grace_seconds if grace is None else grace).wait()
        try:
            run_closers(self.closers)
        finally:
            self._closed.set()

    def wait(self) -> None:
        """Block until the server has stopped and, when it was stopped through :meth:`stop`
        (a signal's handler runs it on a thread of its own), until its closers have run: the
        process must not exit with the database or the logs still open."""
        self.server.wait_for_termination()
        if self._stopped.is_set():
            self._closed.wait()

    def stop_on_signals(self) -> None:
        """Stop gracefully on SIGTERM/SIGINT, or at once for one held while the server
        started (call from the main thread)."""

        def handler(signum: int) -> None:
            log.info(
                "shutting down",
                signal=signal.Signals(signum).name,
                delay_s=self.shutdown_delay,
                grace_s=self.grace_seconds,
            )
            threading.Thread(target=self.stop, name="shutdown", daemon=True).start()

        on_stop_signals(handler)
