"""Following the desired state: load what is missing in the background, then switch.

The watcher hands every ``DeploymentState`` to :meth:`DeploymentManager.offer`, which only
keeps the newest one (by generation; a deployment deleted and created again under the same
name, whose generations start over, is told apart by its ``create_time``). A state of a lower
generation of the same deployment is not stale when it is what the control plane holds now:
after its database was restored from a backup, or it failed over to a lagging database, it
serves an older generation again, as it does to every replica that connects. Such a state is
followed, with a warning naming both generations, when it is the first state of a newly
opened watch stream (which the control plane reads from its database) or when the stream
sends it again (a heartbeat repeats the current state); one that arrives once on an open
stream after a higher one is ignored (logged) like any out-of-date state. A single
background thread applies the state kept: it loads each version the state needs and this
sidecar lacks (download, verify, ORT, warm-up, baseline), and only once all are loaded
replaces the routing table with one assignment. A state whose champion cannot be loaded (a
corrupt artifact, an unreachable control plane) is logged and retried with backoff while the
previous table keeps serving. When only another version fails (the candidate, as
canary or shadow), the state is served without it: the champion answers the candidate's share
and no shadow copies are made, so a new sidecar becomes ready and an old one follows a
rollback or a new champion; the failure is logged, kept in :attr:`DeploymentManager.unloaded`
(which the window reports carry to the control plane) and the state is applied again with
backoff until the version loads. A state that cannot be served at all (:func:`check_state`:
a candidate it does not list, ...) is logged once and ignored until a newer one arrives; the
previous table keeps serving, or, for a first state, the sidecar stays not ready. Versions the
new table no longer needs are released once their in-flight requests have finished.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from sidecar.managed.versions import (
    CANDIDATE,
    LoadedVersion,
    RoutingTable,
    VersionLoader,
    build_table,
    check_state,
)

log = structlog.get_logger("modelplane.sidecar.managed")


def incarnation(state: Any) -> int:
    """Which deployment of its name ``state`` belongs to: its ``create_time`` in nanoseconds
    (0 from a control plane that does not send it). A deployment deleted and created again is
    another one, whose generations start over at 1."""
    return state.create_time.ToNanoseconds() if state.HasField("create_time") else 0


def state_key(state: Any) -> tuple[int, int]:
    """What tells states apart: the deployment's :func:`incarnation` and the generation."""
    return incarnation(state), state.generation


_RETRY_BASE = 0.5
_RETRY_MAX = 30.0
#: A retired version stays loaded this long after it left the table, for a request that
#: picked it from the previous table but has not entered it yet. (Its records still in the
#: observer hub carry the version with them: see :class:`sidecar.managed.versions.Served`.)
_LINGER_S = 1.0


class DeploymentManager:
    """Owns the loaded versions and the current :class:`RoutingTable`."""

    def __init__(
        self,
        loader: VersionLoader,
        name: str,
        on_table: Callable[[RoutingTable], None] | None = None,
        retry_base: float = _RETRY_BASE,
        retry_max: float = _RETRY_MAX,
    ) -> None:
        self.loader = loader
        self.name = name
        #: What serves now (None until the first state's champion is loaded).
        self.table: RoutingTable | None = None
        self.loaded: dict[int, LoadedVersion] = {}
        #: Versions no longer routed to, waiting for their in-flight requests.
        self.retiring: list[LoadedVersion] = []
        #: States whose application failed or left a version out (each attempt counts).
        self.failures = 0
        self.last_error: str | None = None
        #: Versions of the serving state that could not be loaded (number -> why), served
        #: without until a retry loads them.
        self.unloaded: dict[int, str] = {}
        self._on_table = on_table
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._cond = threading.Condition()
        self._desired: Any = None
        #: The lower-generation state ignored last (its :func:`state_key`): followed if the
        #: control plane sends it again before anything else.
        self._lower: tuple[int, int] | None = None
        #: The state applied last (its :func:`state_key`), and the one the table serves.
        self._applied: tuple[int, int] | None = None
        self._served: tuple[int, int] | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._retired_at: dict[int, float] = {}
        #: Versions whose number now has another artifact, still in the serving table.
        self._replaced: list[LoadedVersion] = []

    def start(self) -> None:
        """Start the applying thread."""
        self._thread = threading.Thread(target=self._run, name="deployment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop applying states (the current table keeps serving until the server stops)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def offer(self, state: Any, first: bool = False) -> None:
        """Take a desired state from the control plane (only the newest is kept); ``first``:
        the first state of a newly opened watch stream, the control plane's state as its
        database holds it now. One of an older generation of the same deployment is ignored,
        unless ``first`` or sent again right after it was ignored: then the control plane went
        back (a restored database) and it is followed (see the module docstring). One of
        another deployment of the name (deleted and created again: another
        :func:`incarnation`) replaces the state whatever its generation."""
        with self._cond:
            desired = self._desired
            lower, self._lower = self._lower, None
            if desired is not None:
                if incarnation(state) == incarnation(desired):
                    if state.generation < desired.generation:
                        if not first and state_key(state) != lower:
                            self._lower = state_key(state)
                            log.warning(
                                "ignoring a desired state of an older generation than the one "
                                "followed; it is followed if the control plane sends it again "
                                "(its database went back)",
                                deployment=self.name,
                                generation=state.generation,
                                followed_generation=desired.generation,
                            )
                            return
                        log.warning(
                            "the control plane went back to an older generation of the "
                            "deployment, likely a database restored from a backup or a "
                            "failover to a lagging one; following it, as every replica does",
                            deployment=self.name,
                            generation=state.generation,
                            previous_generation=desired.generation,
                            new_stream=first,
                        )
                elif incarnation(desired):
                    log.info(
                        "the deployment was created again; following the new one",
                        deployment=self.name,
                        generation=state.generation,
                        previous_generation=desired.generation,
                    )
            self._desired = state
            self._cond.notify_all()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first state's champion serves; False on timeout."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        """Whether a routing table serves."""
        return self._ready.is_set()

    def _run(self) -> None:
        attempt = 0
        retry_at: float | None = None
        failed: tuple[int, int] | None = None
        while True:
            with self._cond:
                while not self._stopped:
                    desired = self._desired
                    # A state check_state refused counts as applied: it is not tried
                    # again, and the sidecar waits for a newer one.
                    pending = desired is not None and (
                        state_key(desired) != self._applied or bool(self.unloaded)
                    )
                    now = time.monotonic()
                    # A newer state is tried at once; the one that failed waits its backoff.
                    if pending and (
                        retry_at is None or now >= retry_at or state_key(desired) != failed
                    ):
                        break
                    timeout = 0.2 if self.retiring else None
                    if pending and retry_at is not None:
                        timeout = min(timeout or 1e9, retry_at - now)
                    self._cond.wait(timeout)
                    self._reap()
                if self._stopped:
                    return
                state = self._desired
            if state_key(state) != failed:
                attempt = 0
            try:
                unloaded = self._apply(state)
            except Exception as exc:
                error, why = str(exc), getattr(exc, "reason", type(exc).__name__)
                message = "could not apply the desired state; the previous one keeps serving"
            else:
                if not unloaded:
                    attempt, retry_at, failed = 0, None, None
                    self._reap()
                    continue
                error = "; ".join(f"version {n}: {e}" for n, e in sorted(unloaded.items()))
                why = "VERSION_NOT_LOADED"
                message = "serving the desired state without versions that could not be loaded"
            attempt += 1
            self.failures += 1
            self.last_error = error
            failed = state_key(state)
            delay = min(self._retry_max, self._retry_base * 2 ** min(attempt - 1, 16))
            delay *= 0.5 + random.random() / 2
            retry_at = time.monotonic() + delay
            log.error(
                message,
                deployment=self.name,
                generation=state.generation,
                error=error,
                reason=why,
                retry_in_s=round(delay, 2),
            )
            self._reap()

    def _apply(self, state: Any) -> dict[int, str]:
        """Load what ``state`` lacks and serve it; returns the versions it serves without
        (number -> why). Raises when the champion cannot be loaded (nothing changes then)."""
        problem = check_state(state)
        if problem is not None:
            self._applied = state_key(state)
            self.unloaded = {}
            log.error(
                "ignoring a desired state that cannot be served",
                deployment=self.name,
                generation=state.generation,
                problem=problem,
            )
            return {}
        unloaded: dict[int, str] = {}
        loaded_any = False
        # The champion first: without it nothing serves; without another version, the
        # champion serves in its place.
        ordered = sorted(state.versions, key=lambda sv: sv.version != state.champion_version)
        for served in ordered:
            have = self.loaded.get(served.version)
            if have is not None and have.artifact_sha256 == served.artifact_sha256.lower():
                continue
            with self._cond:
                if self._stopped:
                    return {}
            try:
                loaded = self.loader.load(served, self.name)
            except Exception as exc:
                if served.version == state.champion_version:
                    raise
                unloaded[served.version] = str(exc)
                log.error(
                    "could not load a version; the champion answers in its place",
                    deployment=self.name,
                    generation=state.generation,
                    version=served.version,
                    arm=CANDIDATE if served.version == state.candidate_version else "",
                    error=str(exc),
                    reason=getattr(exc, "reason", type(exc).__name__),
                )
                continue
            loaded.artifact_sha256 = served.artifact_sha256.lower()
            self.loaded[served.version] = loaded
            loaded_any = True
            if have is not None:
                # The same number with another artifact: the old one drains like a retired
                # one once a table without it serves.
                self._replaced.append(have)
        current = self.table
        if (
            not loaded_any
            and current is not None
            and self._served == state_key(state)
            and current.unloaded.keys() == unloaded.keys()
        ):
            # A retry that loaded nothing new: the table serving is still the right one.
            self.unloaded = unloaded
            return unloaded
        table = build_table(state, self.loaded, without=unloaded)
        for version in table.by_label.values():
            version.assign(table.arm_of(version.label))
        old, self.table = self.table, table
        self._applied = self._served = state_key(state)
        self.unloaded = unloaded
        keep = {v.number for v in table.by_label.values()}
        for number in [n for n in self.loaded if n not in keep]:
            self._retire(self.loaded.pop(number))
        for replaced in self._replaced:
            self._retire(replaced)
        self._replaced = []
        if self._on_table is not None:
            self._on_table(table)
        self._ready.set()
        log.info(
            "desired state applied",
            deployment=self.name,
            generation=state.generation,
            champion=table.champion.label,
            candidate=None if table.candidate is None else table.candidate.label,
            candidate_percent=state.candidate_percent,
            shadow_fraction=state.shadow_fraction,
            previous_generation=None if old is None else old.generation,
            unloaded=sorted(unloaded) or None,
        )
        return unloaded

    def _retire(self, version: LoadedVersion) -> None:
        self._retired_at[id(version)] = time.monotonic()
        self.retiring.append(version)

    def queued_rows(self) -> int:
        """Rows waiting in the batch queues of every loaded version: those the routing table
        serves and those retired but still finishing their requests (any thread)."""
        table = self.table
        rows = 0 if table is None else table.queued_rows()
        return rows + sum(version.model.queued_rows for version in list(self.retiring))

    def version(self, label: str) -> LoadedVersion | None:
        """A loaded (or retiring) version by its label (any thread)."""
        table = self.table
        if table is not None:
            found = table.by_label.get(label)
            if found is not None:
                return found
        for version in list(self.retiring):
            if version.label == label:
                return version
        return None

    def _reap(self) -> None:
        """Release retired versions whose requests have all finished."""
        if not self.retiring:
            return
        now = time.monotonic()
        done = [
            v
            for v in self.retiring
            if v.in_flight <= 0 and now - self._retired_at.get(id(v), 0.0) >= _LINGER_S
        ]
        for version in done:
            self.retiring.remove(version)
            self._retired_at.pop(id(version), None)
            try:
                version.release()
            except Exception:
                log.exception("could not release a version", version=version.label)
            log.info("version unloaded", deployment=self.name, version=version.label)
