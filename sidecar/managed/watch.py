"""Following ``DeploymentService.WatchDeployment``: reconnect with backoff, never give up.

The stream sends the desired state at once, on every change and as a heartbeat. When the
control plane is unreachable, or the stream breaks, the watcher waits an exponentially
growing, jittered delay (``base * 2^n`` capped at ``cap``, times a random factor in [0.5, 1))
and tries again; the delay starts over after a state arrives. Meanwhile the sidecar keeps
serving the last state it applied.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import grpc
import structlog

log = structlog.get_logger("modelplane.sidecar.watch")


def backoff(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The delay before reconnect number ``attempt`` (1 = the first retry)."""
    return min(cap, base * 2 ** min(attempt - 1, 30)) * (0.5 + rand() / 2)


class Watcher:
    """A thread streaming desired states of one deployment into ``on_state``."""

    def __init__(
        self,
        stub: Any,
        name: str,
        replica: str,
        on_state: Callable[[Any], None],
        metadata: list[tuple[str, str]],
        base: float = 0.2,
        cap: float = 10.0,
    ) -> None:
        self._stub = stub
        self._name = name
        self._replica = replica
        self._on_state = on_state
        self._metadata = metadata
        self._base = base
        self._cap = cap
        self._stop = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: States received, and streams that ended in an error.
        self.states = 0
        self.errors = 0
        self.connected = False

    def start(self) -> None:
        """Start watching."""
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and cancel the open stream."""
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        from modelplane.v1 import deployments_pb2 as dpb

        attempt = 0
        request = dpb.WatchDeploymentRequest(name=self._name, replica=self._replica)
        while not self._stop.is_set():
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._call = self._stub.WatchDeployment(request, metadata=self._metadata)
                for state in self._call:
                    if not self.connected:
                        log.info("watching the deployment", deployment=self._name)
                    self.connected = True
                    attempt = 0
                    self.states += 1
                    self._on_state(state)
                problem = "the stream ended"
                code = "OK"
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code_of = getattr(exc, "code", None)
                code = code_of().name if callable(code_of) else "UNKNOWN"
                details = getattr(exc, "details", None)
                problem = (details() if callable(details) else "") or str(exc)
            except Exception as exc:  # a bug in on_state must not end the watch
                log.exception("error handling a desired state")
                code, problem = "INTERNAL", str(exc)
            finally:
                with self._lock:
                    self._call = None
            self.connected = False
            self.errors += 1
            attempt += 1
            delay = backoff(attempt, self._base, self._cap)
            log.warning(
                "control plane watch interrupted; serving the last state, reconnecting",
                deployment=self._name,
                code=code,
                error=problem,
                retry_in_s=round(delay, 3),
            )
            if self._stop.wait(delay):
                return
