"""The webhook's probe listener: plain HTTP ``GET /healthz`` (readiness) and ``GET /livez``
(liveness) on a port of their own, outside ``max_connections``, so that connections held open
on the webhook's port cannot fail the kubelet's probes and get the pod restarted.

One thread serves every connection through a selector, so a silent connection holds no thread:
at most :data:`MAX_CONNECTIONS` at once (at the cap, the oldest is closed to admit a new one),
each must send its request line and headers (at most :data:`MAX_HEAD_BYTES`) within
:data:`READ_SECONDS` of being accepted, and gets one answer, then the connection closes. A probe
sends its request as it connects and is answered within milliseconds; connections that idle or
drip bytes are closed by the deadline, or by newer ones at the cap.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("modelplane.injector")

#: Readiness: 503 from the moment the webhook is told to stop.
HEALTH_PATH = "/healthz"
#: Liveness: 200 as long as the webhook answers at all.
LIVE_PATH = "/livez"
#: Connections served at once; at the cap the oldest is closed to admit a new one.
MAX_CONNECTIONS = 16
#: A probe's request line and headers are well under 1 KiB.
MAX_HEAD_BYTES = 4096
#: How long a connection has, from being accepted, to send its request and take the answer.
READ_SECONDS = 2.0
#: Connections accepted at once before the others are looked at.
_ACCEPT_BATCH = 64
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    out: bytes = b""


class HealthServer:
    """Answers the kubelet's probes on ``address`` from one thread; ``/healthz`` answers 503
    once ``stopping`` is set."""

    def __init__(self, address: tuple[str, int], stopping: threading.Event) -> None:
        self._stopping = stopping
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        #: Open connections in the order they were accepted (so their deadlines ascend).
        self._connections: dict[socket.socket, _Connection] = {}
        self._done = False
        self._thread = threading.Thread(target=self._serve, name="injector-health", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one when asked for port 0)."""
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving, and close the listener and every connection."""
        self._done = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()

    def _serve(self) -> None:
        while not self._done:
            first = next(iter(self._connections.values()), None)
            timeout = None if first is None else max(0.0, first.deadline - time.monotonic())
            for key, events in self._selector.select(timeout):
                if key.fileobj is self._listener:
                    self._accept()
                elif isinstance(key.data, _Connection):
                    if events & selectors.EVENT_WRITE:
                        self._send(key.data)
                    else:
                        self._read(key.data)
            now = time.monotonic()
            for conn in list(self._connections.values()):
                if conn.deadline > now:
                    break
                self._drop(conn)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except OSError:  # none left (BlockingIOError), or out of file descriptors
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                self._drop(next(iter(self._connections.values())))
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + READ_SECONDS)
            self._connections[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(MAX_HEAD_BYTES - len(conn.head))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            end = conn.head.find(b"\n\n")
        if end >= 0:
            self._answer(conn, bytes(conn.head[:end]))
        elif len(conn.head) >= MAX_HEAD_BYTES:
            self._respond(
                conn, 431, {"reason": "HEADERS_TOO_LARGE", "message": "headers over 4 KiB"}
            )

    def _answer(self, conn: _Connection, head: bytes) -> None:
        words = head.split(b"\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            self._respond(conn, 400, {"reason": "BAD_REQUEST", "message": "not an HTTP request"})
            return
        method, path = words[0], words[1].split(b"?", 1)[0]
        if path not in (HEALTH_PATH.encode(), LIVE_PATH.encode()):
            message = f"no such path: use GET {HEALTH_PATH} or {LIVE_PATH}"
            self._respond(conn, 404, {"reason": "NOT_FOUND", "message": message}, method)
        elif method not in (b"GET", b"HEAD"):
            self._respond(
                conn, 405, {"reason": "METHOD_NOT_ALLOWED", "message": "probes take GET"}, method
            )
        elif path == HEALTH_PATH.encode() and self._stopping.is_set():
            self._respond(conn, 503, {"status": "stopping"}, method)
        else:
            self._respond(conn, 200, {"status": "ok"}, method)

    def _respond(
        self, conn: _Connection, status: int, doc: dict[str, str], method: bytes = b"GET"
    ) -> None:
        body = json.dumps(doc).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.out = head + (b"" if method == b"HEAD" else body)
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._send(conn)

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        if self._connections.pop(conn.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
