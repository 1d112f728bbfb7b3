"""The webhook's HTTPS server: ``POST /inject`` answers AdmissionReviews, ``GET /healthz``
answers probes. Standard library only (``http.server`` and ``ssl``).

Each connection's TLS handshake runs in its own thread, so a slow client cannot hold up the
listener. Answers: 200 with an AdmissionReview; 400 with ``{"reason", "message"}`` for a body
that is not an AdmissionReview v1; 404, 405, 411, 413 and 415 for the wrong path, method,
length or content type.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from controlplane.injector.annotations import is_digits
from controlplane.injector.review import BadReview, answer_review
from controlplane.injector.settings import InjectorSettings
from controlplane.injector.tls import ReloadingContext

log = structlog.get_logger("modelplane.injector")

INJECT_PATH = "/inject"
HEALTH_PATH = "/healthz"
#: Largest refused body read to its end before answering; larger ones get the answer and a
#: closed connection.
_DRAIN_LIMIT = 64 * 1024 * 1024
#: Stands for a Content-Length too long to read as a number (over 18 digits).
_TOO_LONG = 10**18
# str.isdigit() takes "²" and other digits that int() and HTTP do not.


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: InjectorSettings) -> None:
        self.settings = settings
        self.tls = ReloadingContext(settings.tls_cert, settings.tls_key)
        self.tls.current()  # fail now, not on the first request, when the files are wrong
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        wrapped = self.tls.current().wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, addr


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "modelplane-injector"
    sys_version = ""

    def handle(self) -> None:
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            log.debug("tls handshake failed", peer=self.client_address[0], error=str(exc))
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http", message=format % args, peer=self.client_address[0])

    def _send_json(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, reason: str, message: str) -> None:
        log.info("webhook request refused", status=status, reason=reason, path=self.path)
        self._send_json(status, {"reason": reason, "message": message})

    def do_GET(self) -> None:
        """Health probe of the webhook's own Deployment."""
        if self.path == HEALTH_PATH:
            self._send_json(200, {"status": "ok"})
        elif self.path == INJECT_PATH:
            self._error(405, "METHOD_NOT_ALLOWED", f"{INJECT_PATH} takes POST")
        else:
            self._error(404, "NOT_FOUND", f"no such path: use POST {INJECT_PATH}")

    def do_POST(self) -> None:
        """Answer one AdmissionReview."""
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
        body = self.rfile.read(length)
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
        # read the answer instead of a reset; then close the connection.
        self.close_connection = True
        left = self._content_length() or 0
        if left > _DRAIN_LIMIT:
            return
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)


@dataclass
class InjectorHandle:
    """A running webhook: its address, and how to stop it."""

    server: _Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one when ``listen`` asked for port 0)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, close the listener and wait for the serving thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def wait(self) -> None:
        """Block until :meth:`stop` is called from another thread or a signal handler."""
        self.thread.join()


def start(settings: InjectorSettings) -> InjectorHandle:
    """Bind ``settings.listen``, load the TLS files, and serve on a background thread."""
    host, _, port = settings.listen.rpartition(":")
    server = _Server((host.strip("[]"), int(port)), settings)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="injector", daemon=True
    )
    thread.start()
    log.info("injector listening", address=host, port=server.server_address[1])
    return InjectorHandle(server, thread)
