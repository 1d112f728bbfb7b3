"""Retraining hooks: what runs when a deployment's drift crosses its thresholds.

Two kinds, both fed the drift event as JSON and both run on a small background pool so that
a slow hook never delays a window report:

- a webhook: an http(s) URL on the deployment (set by admins through the API), sent a POST
  with ``Content-Type: application/json``; failures and non-2xx answers are logged;
- a command: an argv list from the server's hooks file (``MODELPLANE_HOOKS_FILE``), never
  from the API. It runs without a shell, with the event JSON on stdin and in the
  ``MODELPLANE_DRIFT_EVENT`` environment variable; a non-zero exit is logged.

The hooks file is YAML (or JSON)::

    deployments:
      fraud:
        command: ["python", "retrain.py", "--model", "fraud"]
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog
import yaml

from modelplane.errors import InvalidArgument

log = structlog.get_logger("modelplane.controlplane.hooks")

EVENT_ENV = "MODELPLANE_DRIFT_EVENT"
MAX_URL_LENGTH = 2048


class HooksFileError(ValueError):
    """The hooks file cannot be read or says something this server cannot do."""


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host, or empty; INVALID_ARGUMENT (INVALID_WEBHOOK_URL)."""
    if not url:
        return ""
    parsed = urlparse(url)
    if len(url) > MAX_URL_LENGTH or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgument(
            f"retraining_hook.webhook_url {url[:80]!r} is not an http(s) URL with a host",
            reason="INVALID_WEBHOOK_URL",
            metadata={"field": "retraining_hook.webhook_url"},
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
        raise HooksFileError(f"cannot read the hooks file {path}: {exc}") from None
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
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hook")

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
            self._pool.submit(self._post, deployment_id, webhook_url, body)
        argv = self.commands.get(deployment_id)
        if argv:
            self._pool.submit(self._run, deployment_id, argv, body)

    def _post(self, deployment_id: str, url: str, body: bytes) -> None:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "modelplane"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                log.info(
                    "retraining webhook called", deployment=deployment_id, status=response.status
                )
        except urllib.error.HTTPError as exc:
            log.warning("retraining webhook refused", deployment=deployment_id, status=exc.code)
        except Exception as exc:
            log.warning("retraining webhook failed", deployment=deployment_id, error=str(exc))

    def _run(self, deployment_id: str, argv: list[str], body: bytes) -> None:
        env = {**os.environ, EVENT_ENV: body.decode()}
        try:
            done = subprocess.run(
                argv, input=body, env=env, capture_output=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("retraining command failed", deployment=deployment_id, error=str(exc))
            return
        if done.returncode != 0:
            log.warning(
                "retraining command exited non-zero",
                deployment=deployment_id,
                code=done.returncode,
                stderr=done.stderr[-500:].decode(errors="replace"),
            )
        else:
            log.info("retraining command ran", deployment=deployment_id)

    def close(self) -> None:
        """Stop taking hooks; those running finish in the background."""
        self._pool.shutdown(wait=False)
