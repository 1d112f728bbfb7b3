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
(a server that drips it byte by byte included) is cut off, and a command is killed with
every process of its session. The pool's threads never keep the server from exiting: at
close, hooks still queued are dropped (logged) and running ones are abandoned at exit.

The hooks file is YAML (or JSON)::

    deployments:
      fraud:
        command: ["python", "retrain.py", "--model", "fraud"]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
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


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host and no credentials, or empty; INVALID_ARGUMENT
    (INVALID_WEBHOOK_URL)."""
    if not url:
        return ""
    field = "retraining_hook.webhook_url"
    if control_character(url) is not None or any(ch.isspace() for ch in url):
        raise InvalidArgument(
            f"{field} holds whitespace or a control character; percent-encode it (%20)",
            reason="INVALID_WEBHOOK_URL",
            metadata={"field": field},
        )
    parsed = urlparse(url)
    if _has_userinfo(url):
        raise InvalidArgument(
            f"{field} {_without_userinfo(url)[:80]!r} carries credentials (user:password@): "
            "they would be stored and shown with the deployment, and are never sent; remove "
            "them. Webhooks take no headers: for a receiver that needs credentials, configure "
            "a command for the deployment in the server's hooks file (MODELPLANE_HOOKS_FILE), "
            "which keeps its secrets on the server",
            reason="INVALID_WEBHOOK_URL",
            metadata={"field": field},
        )
    if len(url) > MAX_URL_LENGTH or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgument(
            f"{field} {url[:80]!r} is not an http(s) URL with a host",
            reason="INVALID_WEBHOOK_URL",
            metadata={"field": field},
        )
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
    fires on an answer that arrives a byte at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
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


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _tracked(base: type[http.client.HTTPConnection], sockets: _Sockets) -> Any:
    """``base`` whose connected sockets ``sockets`` hold."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

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


def _feed(pipe: IO[bytes], body: bytes) -> None:
    """Write ``body`` to a command's stdin and close it; a command that exits without
    reading it all is no error."""
    with contextlib.suppress(OSError), pipe:
        pipe.write(body)


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping only its last :data:`STDERR_TAIL` bytes."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="hook-err", daemon=True)
        self.pipe = pipe
        self.tail = b""

    def run(self) -> None:
        with contextlib.suppress(OSError), self.pipe:
            while chunk := self.pipe.read1(65536):  # type: ignore[attr-defined]
                self.tail = (self.tail + chunk)[-STDERR_TAIL:]


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
        sockets = _Sockets()
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
            error = f"no answer within {self.timeout:g}s" if sockets.expired else str(exc)
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
        threading.Thread(target=_feed, args=(proc.stdin, body), name="hook-in", daemon=True).start()
        stderr = _Tail(proc.stderr)
        stderr.start()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.timeout)
        # Done once stderr is closed too: a process the command left behind in its session
        # that still holds it counts as the command still running.
        stderr.join(max(0.0, deadline - time.monotonic()))
        if proc.returncode is None or stderr.is_alive():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            log.warning(
                "retraining command failed",
                deployment=deployment_id,
                error=f"still running after {self.timeout:g}s; killed",
            )
            return
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
