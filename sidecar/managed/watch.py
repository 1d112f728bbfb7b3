"""Following ``DeploymentService.WatchDeployment``: reconnect with backoff, never give up.

The stream sends the desired state at once, on every change and as a heartbeat. When the
control plane is unreachable, or the stream breaks, the watcher waits an exponentially
growing, jittered delay (``base * 2^n`` capped at ``cap``, times a random factor in [0.5, 1))
and tries again; the delay starts over after a state arrives. Meanwhile the sidecar keeps
serving the last state it applied.

A connection can also die silently (a node, NAT or load balancer flow gone: packets dropped,
nothing closed). When no state arrives for :data:`STALE_HEARTBEATS` heartbeat intervals (the
last state's ``heartbeat_interval``; counted from the call's start, and before any state
arrived :data:`DEFAULT_HEARTBEAT_S`, the first state coming at once), a watchdog cancels the
stream and the watcher reconnects likewise, over a new connection when it was given ``renew``
(keepalive pings on the channel end a dead connection too, but later). A control plane that
does not announce its heartbeat (one older than the field, whose heartbeat was configurable)
gets no watchdog: keepalive alone ends a dead connection then.

Each failed attempt is logged once. While no state serves (none arrived, or its champion
could not be loaded) it says that the sidecar is not ready; afterwards, that the last state
keeps serving. Codes that no
waiting mends are logged as errors saying what to fix (:data:`FIXES`): UNIMPLEMENTED (the
address is no Modelplane control plane), NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED and
UNAUTHENTICATED. The watcher retries those too, with the same backoff: a control plane may be
starting or being upgraded behind the address, and a deployment or a token's role may be
created or granted while the sidecar waits.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from sidecar.metrics import STALE, NoManagedMetrics

log = structlog.get_logger("modelplane.sidecar.watch")

#: The heartbeat assumed before the first state of a stream arrived (every control plane sends
#: one at once), until a state announces its own.
DEFAULT_HEARTBEAT_S = 5.0
#: Heartbeats missed before the stream is taken for dead.
STALE_HEARTBEATS = 3.0
#: The shortest silence taken for a dead stream, however short the heartbeat.
MIN_STALE_S = 1.0

#: Watch errors that someone must fix, by status code: what the error log says
#: (``{address}``: the control plane's address, ``{deployment}``: the deployment's name).
FIXES = {
    "UNIMPLEMENTED": (
        "{address} is not a Modelplane control plane (it does not serve "
        "DeploymentService.WatchDeployment): point --control-plane at the control plane's gRPC "
        "address; retrying, in case a control plane is starting or being upgraded there"
    ),
    "NOT_FOUND": (
        "the control plane at {address} has no deployment {deployment}: create it "
        "(modelplane deployments create) or fix --deployment; retrying"
    ),
    "INVALID_ARGUMENT": (
        "the control plane at {address} refuses the deployment name {deployment}: fix "
        "--deployment (NAME or deployments/NAME); retrying"
    ),
    "PERMISSION_DENIED": (
        "the control plane at {address} does not let this sidecar watch {deployment}: give "
        "--control-plane-token a token with the sidecar role, scoped to the deployment's model "
        "(to such a token a deployment that does not exist answers the same); retrying"
    ),
    "UNAUTHENTICATED": (
        "the control plane at {address} did not accept this sidecar's credentials: give "
        "--control-plane-token a valid token (and, where the control plane requires client "
        "certificates, --control-plane-tls-cert and --control-plane-tls-key); retrying"
    ),
}


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
        on_state: Callable[[Any, bool], None],
        metadata: list[tuple[str, str]],
        base: float = 0.2,
        cap: float = 10.0,
        renew: Callable[[], Any] | None = None,
        metrics: NoManagedMetrics | None = None,
        address: str | None = None,
        serving: Callable[[], bool] | None = None,
    ) -> None:
        """``on_state(state, first)``: takes each state, ``first`` true for the first of a
        newly opened stream (the control plane's state as its database holds it, where a
        later one on the same stream follows the changes it saw); ``renew``: returns a stub
        on a new connection, used after a stream was taken for dead (the old connection may be
        dead too); ``metrics`` counts the streams replaced; ``address``: the control plane's
        address, which error logs name;
        ``serving``: whether a state serves (by default: whether one arrived), which they
        tell too."""
        self._stub = stub
        self._address = address or "the control plane address"
        self._metrics = metrics if metrics is not None else NoManagedMetrics()
        self._serving = serving
        self._renew = renew
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
        self._watchdog: threading.Thread | None = None
        #: When the open call started or last received a state (monotonic), how long it may
        #: stay silent (None: for ever, the control plane announcing no heartbeat), and
        #: whether the watchdog cancelled it.
        self._heard = 0.0
        self._stale_after: float | None = self.stale_after(None)
        self._stale = False
        self._unannounced_logged = False
        #: States received, streams that ended in an error, and of those the ones the
        #: watchdog ended after a silence.
        self.states = 0
        self.errors = 0
        self.stale = 0
        self.connected = False

    @staticmethod
    def stale_after(state: Any) -> float | None:
        """How long a stream may stay silent after ``state`` (``state`` None: before any);
        None, for ever, when the state announces no heartbeat (an older control plane, whose
        heartbeat may be anything)."""
        heartbeat = DEFAULT_HEARTBEAT_S
        if state is not None:
            if not state.HasField("heartbeat_interval"):
                return None
            heartbeat = state.heartbeat_interval.ToTimedelta().total_seconds()
            if heartbeat <= 0:
                return None
        return max(MIN_STALE_S, STALE_HEARTBEATS * heartbeat)

    def start(self) -> None:
        """Start watching."""
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch_dog, name="watchdog", daemon=True)
        self._watchdog.start()

    def _watch_dog(self) -> None:
        """Cancel the open call once it has been silent for too long."""
        while not self._stop.wait(min(0.25, MIN_STALE_S / 4)):
            with self._lock:
                call = self._call
                silent = time.monotonic() - self._heard
                limit = self._stale_after
                if call is None or self._stale or limit is None or silent < limit:
                    continue
                self._stale = True
            log.warning(
                "no desired state or heartbeat from the control plane; reconnecting",
                deployment=self._name,
                silent_s=round(silent, 1),
            )
            call.cancel()

    def stop(self) -> None:
        """Stop watching and cancel the open stream."""
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(5)

    def _run(self) -> None:
        from modelplane.v1 import deployments_pb2 as dpb

        attempt = 0
        request = dpb.WatchDeploymentRequest(name=self._name, replica=self._replica)
        while not self._stop.is_set():
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._call = call = self._stub.WatchDeployment(request, metadata=self._metadata)
                    self._heard = time.monotonic()
                    self._stale = False
                first = True
                for state in call:
                    stale_after = self.stale_after(state)
                    with self._lock:
                        self._heard = time.monotonic()
                        self._stale_after = stale_after
                    if stale_after is None and not self._unannounced_logged:
                        self._unannounced_logged = True
                        log.info(
                            "the control plane does not announce its watch heartbeat; a silent "
                            "connection is left to keepalive to end",
                            deployment=self._name,
                        )
                    if not self.connected:
                        log.info("watching the deployment", deployment=self._name)
                    self.connected = True
                    attempt = 0
                    self.states += 1
                    self._on_state(state, first)
                    first = False
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
                    stale, self._stale = self._stale, False
            if stale:
                self.stale += 1
                self._metrics.reconnected(STALE)
                code = "DEADLINE_EXCEEDED"
                problem = f"no state for {self._stale_after or 0:g} s: the connection seems dead"
                if self._renew is not None:
                    try:
                        self._stub = self._renew()
                    except Exception:
                        log.exception("could not open a new connection to the control plane")
            self.connected = False
            self.errors += 1
            attempt += 1
            delay = backoff(attempt, self._base, self._cap)
            self._log_failure(code, problem, delay)
            if self._stop.wait(delay):
                return

    def _log_failure(self, code: str, problem: str, delay: float) -> None:
        """Log a failed or ended watch: what it means for serving, and what to fix."""
        served = self._serving() if self._serving is not None else self.states > 0
        fields: dict[str, Any] = {
            "deployment": self._name,
            "control_plane": self._address,
            "code": code,
            "error": problem,
            "retry_in_s": round(delay, 3),
        }
        fix = FIXES.get(code)
        if fix is not None:
            log.error(
                fix.format(address=self._address, deployment=self._name),
                serving=("the last state" if served else "nothing: the sidecar is not ready"),
                **fields,
            )
        elif served:
            log.warning(
                "control plane watch interrupted; serving the last state, reconnecting",
                **fields,
            )
        else:
            log.warning(
                "control plane watch failed before a desired state could be served; the "
                "sidecar is not ready until one is, reconnecting",
                **fields,
            )
