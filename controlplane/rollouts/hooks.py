"""Retraining hooks: what runs when a deployment's drift crosses its thresholds.

Two kinds, both fed the drift event as JSON and both run on a small background pool so that
a slow hook never delays a window report:

- a webhook: an http(s) URL on the deployment (set by admins through the API), sent a POST
  with ``Content-Type: application/json``; failures and non-2xx answers are logged. A redirect
  is not followed (it would turn the POST into a GET elsewhere): a 3xx is a failed delivery.
  The URL may not carry credentials (``https://user:token@host/...``): they would be stored and
  shown with the deployment, and urllib does not send them; a webhook takes no headers, so a
  receiver that needs credentials is called from a command, whose secrets stay on the server.
  One stored before this check is not called (logged, without the URL);
- a command: an argv list from the server's hooks file (``MODELPLANE_HOOKS_FILE``), never
  from the API. It runs without a shell, in a session of its own, with the event JSON on stdin
  and, when it is at most :data:`MAX_ENV_EVENT` bytes, in the ``MODELPLANE_DRIFT_EVENT``
  environment variable (Linux refuses to start a program with one environment string over
  128 KiB; a larger event, a model with thousands of features, is on stdin only and the
  variable is unset), and with the server's environment less its ``MODELPLANE_*`` settings
  (the database URL and its password among them); a non-zero exit is logged.

Each call has ``hook_timeout_seconds`` in all: a webhook whose answer has not arrived by then
(its name lookup, connect, proxy tunnel and TLS handshake count too, and a server that drips
any of them byte by byte is no exception) is cut off, and a command is killed with every
process of its session, whatever process group they moved to (one that left the session with
``setsid`` is not, but no longer holds the call through the command's pipes). The pool's
threads never keep the server from exiting: at close, hooks still queued are dropped (logged)
and running ones are abandoned at exit.

The hooks file is YAML (or JSON)::

    deployments:
      fraud:
        command: ["python", "retrain.py", "--model", "fraud"]
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import queue
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import structlog
import yaml

from controlplane.names import control_character
from modelplane.errors import InvalidArgument

log = structlog.get_logger("modelplane.controlplane.hooks")

EVENT_ENV = "MODELPLANE_DRIFT_EVENT"
#: The largest event (JSON bytes) also put in ``MODELPLANE_DRIFT_EVENT``: below Linux's limit
#: on one environment string (128 KiB, ``MAX_ARG_STRLEN``), name and '=' included.
MAX_ENV_EVENT = 100_000
MAX_URL_LENGTH = 2048
#: Threads running hooks, shared by all deployments (each call is bounded by the timeout).
POOL_THREADS = 4
#: Settings variables kept from a retraining command's environment.
SETTINGS_PREFIX = "MODELPLANE_"
#: Bytes of a failed command's stderr that are logged (its end).
STDERR_TAIL = 500
#: How often a command's pipe threads look whether it was given up on (seconds).
PIPE_POLL_SECONDS = 0.1
#: How long a timed-out command's session is killed again while some process of it is left.
KILL_SECONDS = 5.0


class HooksFileError(InvalidArgument):
    """The hooks file cannot be read or says something this server cannot do; the server
    refuses to start (the CLI exits 2 on one line)."""

    default_reason = "INVALID_HOOKS_FILE"


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


def load_commands(path: str) -> dict[str, list[str]]:
    """Deployment id → argv from the hooks file; empty without a file. Raises
    :class:`HooksFileError` on a file that is unreadable or malformed."""
    if not path:
        return {}
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())  # YAML's errors span lines: one line here
        raise HooksFileError(f"cannot read the hooks file {path}: {detail}") from None
    entries = (doc or {}).get("deployments") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise HooksFileError(f"the hooks file {path} needs a 'deployments' mapping")
    out: dict[str, list[str]] = {}
    for deployment_id, entry in entries.items():
        argv = entry.get("command") if isinstance(entry, dict) else None
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and a for a in argv)
        ):
            raise HooksFileError(
                f"hooks file {path}: deployment {deployment_id!r} needs 'command', a non-empty "
                "list of strings (the program and its arguments; no shell)"
            )
        out[str(deployment_id)] = list(argv)
    return out


def command_env(body: bytes) -> dict[str, str]:
    """A retraining command's environment: the server's, less its ``MODELPLANE_*`` settings
    (secrets such as the database URL), plus the event in ``MODELPLANE_DRIFT_EVENT`` when it
    is at most :data:`MAX_ENV_EVENT` bytes (stdin always carries it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    if len(body) <= MAX_ENV_EVENT:
        env[EVENT_ENV] = body.decode()
    return env


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


def _ready(fd: int, events: int, stop: threading.Event) -> bool:
    """Wait until ``fd`` is ready for ``events`` (or its other end is closed); False once
    ``stop`` is set, looked at every :data:`PIPE_POLL_SECONDS`."""
    poller = select.poll()
    poller.register(fd, events)
    while not stop.is_set():
        if poller.poll(PIPE_POLL_SECONDS * 1000):
            return True
    return False


def _feed(pipe: IO[bytes], body: bytes, stop: threading.Event) -> None:
    """Write ``body`` to a command's stdin and close it; a command that exits without
    reading it all is no error, and once ``stop`` is set (a process outside the command's
    session may hold the pipe) the rest is dropped."""
    with contextlib.suppress(OSError), pipe:
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        view = memoryview(body)
        while view and _ready(fd, select.POLLOUT, stop):
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view) :]


class _Tail(threading.Thread):
    """Reads a pipe to its end, or until ``stop`` is set, keeping only its last
    :data:`STDERR_TAIL` bytes."""

    def __init__(self, pipe: IO[bytes], stop: threading.Event) -> None:
        super().__init__(name="hook-err", daemon=True)
        self.pipe = pipe
        self.stop = stop
        self.tail = b""

    def run(self) -> None:
        with contextlib.suppress(OSError), self.pipe:
            fd = self.pipe.fileno()
            os.set_blocking(fd, False)
            while _ready(fd, select.POLLIN, self.stop):
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self.tail = (self.tail + chunk)[-STDERR_TAIL:]


def _session(sid: int) -> list[int]:
    """The live processes (zombies left out) of session ``sid``, from each process's
    ``/proc/PID/stat`` (its sixth field)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # After the command name, which is in parentheses and may hold anything:
                # state, ppid, pgrp, session, ...
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if fields[0] not in (b"Z", b"X") and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _kill_session(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL every process of the session that ``proc`` leads (started with a session of
    its own, whose id is its pid), again while any is left (one may have forked meanwhile),
    for at most :data:`KILL_SECONDS`; the number still left then."""
    if not os.path.isdir("/proc"):  # not Linux: its process group only
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        return 0
    give_up = time.monotonic() + KILL_SECONDS
    while pids := _session(proc.pid):
        if time.monotonic() > give_up:
            return len(pids)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return 0


class HookRunner:
    """Runs webhooks and commands in the background. Build with :meth:`load`."""

    def __init__(self, commands: dict[str, list[str]], timeout: float) -> None:
        self.commands = commands
        self.timeout = timeout
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @classmethod
    def load(cls, hooks_file: str, timeout: float) -> HookRunner:
        """A runner with the commands of ``hooks_file`` (none when empty)."""
        return cls(load_commands(hooks_file), timeout)

    def has_command(self, deployment_id: str) -> bool:
        """Whether the hooks file names a command for the deployment."""
        return deployment_id in self.commands

    def fire(self, deployment_id: str, webhook_url: str, event: dict[str, Any]) -> None:
        """Start the deployment's hooks with ``event``; returns at once."""
        body = json.dumps(event, sort_keys=True, default=str).encode()
        if webhook_url:
            self._submit(lambda: self._post(deployment_id, webhook_url, body))
        argv = self.commands.get(deployment_id)
        if argv:
            self._submit(lambda: self._run(deployment_id, argv, body))

    def _submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._queue.put(call)
            if len(self._threads) < POOL_THREADS:
                # Daemon threads: a hook running at exit never holds the process.
                thread = threading.Thread(target=self._work, name="hook", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            try:
                call()
            except Exception:
                log.exception("retraining hook failed")

    def _post(self, deployment_id: str, url: str, body: bytes) -> None:
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
        sockets = _Sockets(self.timeout)
        deadline = threading.Timer(self.timeout, sockets.expire)
        deadline.daemon = True
        deadline.start()
        try:
            with _opener(sockets).open(request, timeout=self.timeout) as response:
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
            error = f"no answer within {self.timeout:g}s" if sockets.passed else str(exc)
            log.warning("retraining webhook failed", deployment=deployment_id, error=error)
        finally:
            deadline.cancel()

    def _run(self, deployment_id: str, argv: list[str], body: bytes) -> None:
        try:
            # A session of its own: on timeout its children are killed with it. Its stdout
            # goes nowhere and only the last STDERR_TAIL bytes of its stderr are kept (a
            # chatty command is never held in memory whole); the end of stderr is logged.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=command_env(body),
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("retraining command failed", deployment=deployment_id, error=str(exc))
            return
        assert proc.stdin is not None and proc.stderr is not None
        deadline = time.monotonic() + self.timeout
        stop = threading.Event()
        threading.Thread(
            target=_feed, args=(proc.stdin, body, stop), name="hook-in", daemon=True
        ).start()
        stderr = _Tail(proc.stderr, stop)
        stderr.start()
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.timeout)
            # Done once stderr is closed too: a process the command left behind in its
            # session that still holds it counts as the command still running.
            stderr.join(max(0.0, deadline - time.monotonic()))
            if proc.returncode is None or stderr.is_alive():
                left = _kill_session(proc)
                proc.wait()
                log.warning(
                    "retraining command failed",
                    deployment=deployment_id,
                    error=f"still running after {self.timeout:g}s; killed",
                )
                if left:
                    log.warning(
                        "retraining command's processes outlived SIGKILL",
                        deployment=deployment_id,
                        processes=left,
                    )
                return
        finally:
            # Its pipes' threads end even when a process that left its session holds them.
            stop.set()
        if proc.returncode != 0:
            log.warning(
                "retraining command exited non-zero",
                deployment=deployment_id,
                code=proc.returncode,
                stderr=stderr.tail.decode(errors="replace"),
            )
        else:
            log.info("retraining command ran", deployment=deployment_id)

    def close(self) -> None:
        """Stop taking hooks and drop those still queued (logged); those running finish in
        the background, or are abandoned when the process exits."""
        with self._lock:
            self._closed = True
            dropped = 0
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                dropped += call is not None
            for _ in self._threads:
                self._queue.put(None)
        if dropped:
            log.warning("retraining hooks dropped at shutdown", hooks=dropped)
