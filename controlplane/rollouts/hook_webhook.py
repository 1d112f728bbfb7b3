"""Retraining webhooks: checking their URLs, and calling them with a deadline over the whole
call (see :mod:`controlplane.rollouts.hooks`)."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from controlplane.names import control_character
from modelplane.errors import InvalidArgument

MAX_URL_LENGTH = 2048


def _has_userinfo(url: str) -> bool:
    return "@" in urlparse(url).netloc


def _without_userinfo(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``, for messages."""
    parsed = urlparse(url)
    if "@" not in parsed.netloc:
        return url
    return parsed._replace(netloc="***@" + parsed.netloc.rpartition("@")[2]).geturl()


def _address_problem(netloc: str) -> str:
    """Why the host and port of ``netloc`` cannot be connected to; empty when they can."""
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):
        host, _, rest = host_port[1:].partition("]")
        if rest and not rest.startswith(":"):
            return "has text after its bracketed IPv6 address (only ':PORT' may follow)"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "has brackets around something other than an IPv6 address"
        port = rest[1:]
    elif "[" in host_port or "]" in host_port:
        return "has a bracket outside a bracketed IPv6 address"
    else:
        _, _, port = host_port.partition(":")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"has port {port[:20]!r}; a port is a number from 1 to 65535"
    return ""


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host, a port (if any) from 1 to 65535 and no credentials, or
    empty; INVALID_ARGUMENT (INVALID_WEBHOOK_URL)."""
    if not url:
        return ""
    field = "retraining_hook.webhook_url"

    def refused(message: str) -> InvalidArgument:
        return InvalidArgument(
            f"{field} {message}", reason="INVALID_WEBHOOK_URL", metadata={"field": field}
        )

    if control_character(url) is not None or any(ch.isspace() for ch in url):
        raise refused("holds whitespace or a control character; percent-encode it (%20)")
    try:
        parsed = urlparse(url)
    except ValueError as exc:  # an unclosed '[' among others: "Invalid IPv6 URL"
        raise refused(f"{url[:80]!r} is not a valid URL ({str(exc)[:80]})") from None
    if _has_userinfo(url):
        raise refused(
            f"{_without_userinfo(url)[:80]!r} carries credentials (user:password@): "
            "they would be stored and shown with the deployment, and are never sent; remove "
            "them. Webhooks take no headers: for a receiver that needs credentials, configure "
            "a command for the deployment in the server's hooks file (MODELPLANE_HOOKS_FILE), "
            "which keeps its secrets on the server"
        )
    if len(url) > MAX_URL_LENGTH or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise refused(f"{url[:80]!r} is not an http(s) URL with a host")
    if problem := _address_problem(parsed.netloc):
        raise refused(f"{url[:80]!r} {problem}")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answers a redirect with its 3xx error instead of following it."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class _Sockets:
    """The sockets of one webhook call, shut down at its deadline (a per-read timeout never
    fires on an answer that arrives a byte at a time), each from the moment it exists: the TCP
    connect, a proxy's tunnel and the TLS handshake count against the deadline too."""

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._deadline = time.monotonic() + timeout
        self.expired = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._open:
                _shut(sock)

    @property
    def passed(self) -> bool:
        """Whether the deadline has passed (its timer may not have fired yet)."""
        return self.expired or time.monotonic() >= self._deadline

    def remaining(self) -> float:
        """Seconds left to the deadline; raises :class:`TimeoutError` once it has passed."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.expire()
            raise TimeoutError("webhook deadline passed")
        return left

    def connect(
        self,
        address: tuple[str, int],
        _timeout: Any = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """:func:`socket.create_connection` within the time left, the name lookup included;
        each socket is held (and so shut at the deadline) from its creation."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, addr in self._resolve(host, port):
            sock = socket.socket(family, kind, proto)
            self.add(sock)
            try:
                sock.settimeout(self.remaining())
                if source_address:
                    sock.bind(source_address)
                sock.connect(addr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
                if self.expired:
                    break
        raise error or OSError(f"no address found for {host}")

    def _resolve(self, host: str, port: int) -> list[Any]:
        """``getaddrinfo`` within the time left: a resolver that hangs is left to its own
        timeout in a daemon thread of its own."""
        found: list[Any] = []

        def lookup() -> None:
            try:
                found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
            except OSError as exc:
                found.append(exc)

        thread = threading.Thread(target=lookup, name="hook-dns", daemon=True)
        thread.start()
        thread.join(self.remaining())
        if not found:
            self.expire()
            raise TimeoutError(f"no address for {host} within the deadline")
        if isinstance(found[0], OSError):
            raise found[0]
        return list(found[0])


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _tracked(base: type[http.client.HTTPConnection], sockets: _Sockets) -> Any:
    """``base`` whose sockets ``sockets`` hold from their creation and whose connect, proxy
    tunnel and TLS handshake get only the call's remaining time."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        sock: socket.socket

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = sockets.connect

        def connect(self) -> None:
            if not isinstance(self, http.client.HTTPSConnection):
                super().connect()
                return
            # HTTPSConnection.connect, with the TLS socket held before its handshake: TCP
            # (and a proxy's CONNECT), then TLS.
            http.client.HTTPConnection.connect(self)
            raw: socket.socket = self.sock
            raw.settimeout(sockets.remaining())
            tls: ssl.SSLSocket = self._context.wrap_socket(
                raw, server_hostname=self._tunnel_host or self.host, do_handshake_on_connect=False
            )
            self.sock = tls
            sockets.add(tls)
            tls.do_handshake()

    return Tracked


def _opener(sockets: _Sockets) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment included) without redirects, whose
    connections ``sockets`` can cut."""

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(_tracked(http.client.HTTPConnection, sockets), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(
                _tracked(http.client.HTTPSConnection, sockets),
                req,
                context=self._context,  # type: ignore[attr-defined]
            )

    return urllib.request.build_opener(_NoRedirect, Http, Https)


def post(deployment_id: str, url: str, body: bytes, timeout: float, log: Any) -> None:
    """POST ``body`` to the deployment's webhook within ``timeout`` seconds in all, logging
    the outcome through ``log``."""
    if _has_userinfo(url):
        # Stored before such URLs were refused: never sent, and never logged.
        log.warning(
            "retraining webhook not called: its URL carries credentials; set one without",
            deployment=deployment_id,
        )
        return
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "modelplane"},
    )
    sockets = _Sockets(timeout)
    deadline = threading.Timer(timeout, sockets.expire)
    deadline.daemon = True
    deadline.start()
    try:
        with _opener(sockets).open(request, timeout=timeout) as response:
            status = response.status
        log.info("retraining webhook called", deployment=deployment_id, status=status)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            log.warning(
                "retraining webhook redirected; redirects are not followed",
                deployment=deployment_id,
                status=exc.code,
                location=exc.headers.get("Location", ""),
            )
        else:
            log.warning("retraining webhook refused", deployment=deployment_id, status=exc.code)
    except Exception as exc:
        error = f"no answer within {timeout:g}s" if sockets.passed else str(exc)
        log.warning("retraining webhook failed", deployment=deployment_id, error=error)
    finally:
        deadline.cancel()
