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

The webhook's call is :func:`controlplane.rollouts.hook_webhook.post`, the command's run
:func:`controlplane.rollouts.hook_command.run`; this module queues them.

The hooks file is YAML (or JSON)::

    deployments:
      fraud:
        command: ["python", "retrain.py", "--model", "fraud"]
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml

from controlplane.rollouts import hook_command, hook_webhook
from controlplane.rollouts.hook_command import MAX_ENV_EVENT, command_env
from controlplane.rollouts.hook_webhook import check_webhook_url
from modelplane.errors import InvalidArgument

__all__ = [
    "MAX_ENV_EVENT",
    "HookRunner",
    "HooksFileError",
    "check_webhook_url",
    "command_env",
    "load_commands",
]

log = structlog.get_logger("modelplane.controlplane.hooks")

#: Threads running hooks, shared by all deployments (each call is bounded by the timeout).
POOL_THREADS = 4


class HooksFileError(InvalidArgument):
    """The hooks file cannot be read or says something this server cannot do; the server
    refuses to start (the CLI exits 2 on one line)."""

    default_reason = "INVALID_HOOKS_FILE"


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
        hook_webhook.post(deployment_id, url, body, self.timeout, log)

    def _run(self, deployment_id: str, argv: list[str], body: bytes) -> None:
        hook_command.run(deployment_id, argv, body, self.timeout, log)

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
