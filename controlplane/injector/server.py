"""The webhook's HTTPS server: ``POST /inject`` answers AdmissionReviews, ``GET /healthz``
(readiness) and ``GET /livez`` (liveness) answer probes, here and on the plain-HTTP
``health_listen`` port (:mod:`controlplane.injector.health`), which ``max_connections`` does
not cover. Standard library only (``http.server`` and ``ssl``).

Each connection's TLS handshake runs in its own thread, so a slow client cannot hold up the
listener. Answers: 200 with an AdmissionReview; 400 with ``{"reason", "message"}`` for a body
that is not an AdmissionReview v1; 404, 405, 411, 413 and 415 for the wrong path, method,
length or content type; 431 for a request line and headers over 64 KiB; 503
(``OVERLOADED``, ``Retry-After: 1``) when a body found no room among the bodies being
received, or a review waited ``parse_wait_seconds`` for room among the bodies being parsed.

Memory, whatever clients send and however slowly: at most ``max_connections`` connections are
served at once, each with a head of at most 64 KiB (at the cap, a new connection is admitted by
closing the one idle longest, waiting for its next request; with none idle it waits in the
listen backlog);
a body over 64 KiB is read only once its Content-Length fits in ``max_receiving_bytes``
beside the others being received or answered; parsing JSON takes up to about 26 times the
body's size (many tiny objects), so the bodies parsed at once hold at most
``max_parsing_bytes`` between them (two of the largest bodies by default; any number of
ordinary pods of a few KiB). A TLS handshake must be done within
``handshake_timeout_seconds``, and each request from its first byte to its body's last within
``read_timeout_seconds``: bytes dripping in do not extend either.

:meth:`InjectorHandle.stop` shuts down gracefully: ``/healthz`` answers 503 at once while
reviews are still answered for the shutdown delay, so that the Service's endpoints drop the
pod before its port closes; then the listener closes and the reviews in flight get up to the
grace to be answered.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from controlplane.injector.annotations import is_digits
from controlplane.injector.health import HEALTH_PATH, LIVE_PATH, HealthServer
from controlplane.injector.limits import ByteBudget, ConnectionSlots, DeadlineReader
from controlplane.injector.review import BadReview, answer_review
from controlplane.injector.settings import MAX_HEAD_BYTES, SMALL_BODY_BYTES, InjectorSettings
from controlplane.injector.tls import ReloadingContext

log = structlog.get_logger("modelplane.injector")

INJECT_PATH = "/inject"
#: Largest refused body read to its end before answering; larger ones get the answer and a
#: closed connection.
_DRAIN_LIMIT = 64 * 1024 * 1024
#: How long a refused body is read (and dropped) at most: a client that means its request
#: sends the body at once, and a connection draining one holds a place among max_connections.
_DRAIN_SECONDS = 1.0
#: How long a connection waits for its next request (less when a new one needs its slot).
_IDLE_SECONDS = 30.0
#: Connections waiting to be accepted, in the kernel, while max_connections are served.
_BACKLOG = 1024
#: Stands for a Content-Length too long to read as a number (over 18 digits).
_TOO_LONG = 10**18
# str.isdigit() takes "²" and other digits that int() and HTTP do not.


class _Server(ThreadingHTTPServer):
    # Connections idling between requests must not keep the process alive once it stops; the
    # requests being answered are waited for by count (in_flight), up to the grace.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = _BACKLOG

    def __init__(self, address: tuple[str, int], settings: InjectorSettings) -> None:
        self.settings = settings
        self.tls = ReloadingContext(settings.tls_cert, settings.tls_key)
        self.tls.current()  # fail now, not on the first request, when the files are wrong
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        #: Set when the webhook is told to stop: /healthz answers 503, connections close
        #: after each answer.
        self.stopping = threading.Event()
        self._in_flight = 0
        self._idle = threading.Condition()
        #: Bodies over SMALL_BODY_BYTES from before they are read until they are answered.
        self.receiving = ByteBudget(settings.max_receiving_bytes)
        #: Bodies being parsed and answered.
        self.parsing = ByteBudget(settings.max_parsing_bytes)
        self.slots = ConnectionSlots(settings.max_connections)
        super().__init__(address, _Handler)

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Counts a request as in flight while it is read and answered."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_answered(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the requests in flight to be answered; the
        number still in flight then."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout)
            return self._in_flight

    def get_request(self) -> tuple[Any, Any]:
        # With max_connections served, the connection idle longest is closed and the next
        # one stays in the listen backlog until a slot is free: serve_forever ignores the
        # OSError and, the listener still being readable, calls again (so that a shutdown is
        # not held up meanwhile).
        if not self.slots.take(timeout=0.05):
            raise _AllBusy("max_connections are being served")
        try:
            sock, addr = self.socket.accept()
            wrapped = self.tls.current().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except BaseException:
            self.slots.give_back(None)
            raise
        return wrapped, addr

    def shutdown_request(self, request: Any) -> None:
        # Called once for each connection get_request returned, whatever became of it.
        try:
            super().shutdown_request(request)
        finally:
            self.slots.give_back(request)


class _AllBusy(OSError):
    """No connection is accepted now: max_connections are being served."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "modelplane-injector"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # The handshake's deadline: CPython's do_handshake takes the socket's timeout for the
        # whole of it.
        self.connection.settimeout(self.server.settings.handshake_timeout_seconds)
        self.rfile.close()  # the socket's own reader, replaced by one with deadlines
        self.reader = DeadlineReader(self.connection)
        self.buffered = io.BufferedReader(self.reader)
        self.rfile = self.buffered

    def handle(self) -> None:
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            log.debug("tls handshake failed", peer=self.client_address[0], error=str(exc))
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError, http.client.HTTPException):
            # HTTPException: a request line over MAX_HEAD_BYTES (ReadLimitExceeded); one in
            # the headers is answered 431 by parse_request.
            self.close_connection = True

    def handle_one_request(self) -> None:
        # Wait for the request's first byte (the connection may be closed meanwhile to admit
        # a new one); from then on the request line, the headers and the body must come
        # within one deadline (the headers within MAX_HEAD_BYTES).
        self.server.slots.idle(self.request)
        self.reader.expect(_IDLE_SECONDS)
        try:
            started = bool(self.buffered.peek(1))
        except OSError:  # the idle deadline passed, or the connection was closed
            started = False
        if not self.server.slots.busy(self.request) or not started:
            self.close_connection = True
            return
        self.reader.expect(self.server.settings.read_timeout_seconds, MAX_HEAD_BYTES)
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http", message=format % args, peer=self.client_address[0])

    def _send_json(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(doc).encode()
        # Reads left the socket with what remained of their deadline.
        self.connection.settimeout(self.server.settings.read_timeout_seconds)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.server.stopping.is_set() or self.close_connection:
            # Stopping: the client's next request goes over a new connection, to another pod.
            # Otherwise a refused request whose body was not read (or not all of it): the
            # client learns that the connection closes instead of finding it closed.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        log.info("webhook request refused", status=status, reason=reason, path=self.path)
        self._send_json(status, {"reason": reason, "message": message}, headers)

    def do_GET(self) -> None:
        """Readiness and liveness probes of the webhook's own Deployment."""
        self.reader.lift_byte_limit()
        with self.server.answering():
            self._get()

    def _get(self) -> None:
        if self.path == HEALTH_PATH and self.server.stopping.is_set():
            self._send_json(503, {"status": "stopping"})
        elif self.path in (HEALTH_PATH, LIVE_PATH):
            self._send_json(200, {"status": "ok"})
        elif self.path == INJECT_PATH:
            self._error(405, "METHOD_NOT_ALLOWED", f"{INJECT_PATH} takes POST")
        else:
            self._error(404, "NOT_FOUND", f"no such path: use POST {INJECT_PATH}")

    def do_POST(self) -> None:
        """Answer one AdmissionReview."""
        self.reader.lift_byte_limit()
        with self.server.answering():
            self._post()

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != INJECT_PATH:
            self._drain_and_close()
            self._error(404, "NOT_FOUND", f"no such path: use POST {INJECT_PATH}")
            return
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            self._drain_and_close()
            self._error(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content-Type must be application/json, not {media or 'missing'!r}",
            )
            return
        length = self._content_length()
        if length is None:
            self.close_connection = True
            self._error(411, "LENGTH_REQUIRED", "send the AdmissionReview with a Content-Length")
            return
        if length > self.server.settings.max_body_bytes:
            self._drain_and_close()
            self._error(
                413,
                "BODY_TOO_LARGE",
                f"the body has {length} bytes; at most {self.server.settings.max_body_bytes}",
            )
            return
        # Room for the body before a byte of it is read; small ones need none.
        with self.server.receiving.hold(length if length > SMALL_BODY_BYTES else 0) as room:
            if not room:
                self._drain_and_close()
                self._error(
                    503,
                    "OVERLOADED",
                    "too many large reviews are being received at once; try again",
                    {"Retry-After": "1"},
                )
                return
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True  # the client closed its side mid-body
                return
            wait = self.server.settings.parse_wait_seconds
            with self.server.parsing.hold(len(body), wait) as room:
                if not room:
                    self._error(
                        503,
                        "OVERLOADED",
                        "too many reviews are being parsed at once; try again",
                        {"Retry-After": "1"},
                    )
                    return
                self._answer(body)

    def _answer(self, body: bytes) -> None:
        try:
            answer = answer_review(body, self.server.settings)
        except BadReview as exc:
            self._error(400, exc.reason, exc.message)
            return
        except Exception as exc:
            # Whatever slipped past the checks gets an answer, not a dropped connection.
            log.error("admission review failed", exc_info=exc)
            self._error(500, "INTERNAL", "the webhook could not answer this review; see its log")
            return
        response = answer["response"]
        log.info(
            "admission reviewed",
            uid=response["uid"],
            allowed=response["allowed"],
            patched="patch" in response,
            warnings=response.get("warnings", []),
            message=response.get("status", {}).get("message", ""),
        )
        self._send_json(200, answer)

    def _content_length(self) -> int | None:
        """The Content-Length in bytes; ``None`` when it is missing or not ASCII digits."""
        text = (self.headers.get("Content-Length") or "").strip()
        if not is_digits(text):
            return None
        digits = text.lstrip("0") or "0"
        # int() refuses thousands of digits; any length of 19 or more is too large anyway.
        return int(digits) if len(digits) <= 18 else _TOO_LONG

    def _drain_and_close(self) -> None:
        # Read (and drop) an unwanted body of reasonable size, so that the client gets to
        # read the answer instead of a reset; then close the connection. A body that has not
        # come within _DRAIN_SECONDS still gets the answer.
        self.close_connection = True
        left = self._content_length() or 0
        if left > _DRAIN_LIMIT:
            return
        self.reader.shorten(_DRAIN_SECONDS)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except TimeoutError:
            pass


@dataclass
class InjectorHandle:
    """A running webhook: its addresses, and how to stop it."""

    server: _Server
    thread: threading.Thread
    health: HealthServer
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one when ``listen`` asked for port 0)."""
        return int(self.server.server_address[1])

    @property
    def health_port(self) -> int:
        """The port of the probes (the chosen one when ``health_listen`` asked for port 0)."""
        return self.health.port

    def stop(self) -> None:
        """Stop gracefully: ``/healthz`` answers 503 at once while reviews are still answered
        for the shutdown delay; then stop accepting, close the listener and wait up to the
        grace for the reviews in flight; the probes are answered until then. A second call
        waits for the first to finish."""
        if not self._stop_lock.acquire(blocking=False):
            self._closed.wait()
            return
        settings = self.server.settings
        try:
            self.server.stopping.set()
            log.info(
                "stopping: /healthz answers 503 while reviews are still answered",
                delay_s=settings.shutdown_delay_seconds,
                grace_s=settings.grace_seconds,
            )
            time.sleep(settings.shutdown_delay_seconds)
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            left = self.server.wait_answered(settings.grace_seconds)
            if left:
                log.warning(
                    "stopped with reviews unanswered",
                    in_flight=left,
                    grace_s=settings.grace_seconds,
                )
            else:
                log.info("stopped")
        finally:
            self.health.close()
            self._closed.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop`, called from another thread, has finished (True), or
        ``timeout`` seconds pass (False)."""
        return self._closed.wait(timeout)


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def start(settings: InjectorSettings) -> InjectorHandle:
    """Bind ``settings.listen`` and ``settings.health_listen``, load the TLS files, and serve
    on background threads."""
    server = _Server(_address(settings.listen), settings)
    try:
        health = HealthServer(_address(settings.health_listen), server.stopping)
    except BaseException:
        server.server_close()
        raise
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="injector", daemon=True
    )
    health.start()
    thread.start()
    log.info("injector listening", address=settings.listen, port=server.server_address[1])
    log.info("injector probes listening", address=settings.health_listen, port=health.port)
    return InjectorHandle(server, thread, health)
