"""The reconciler: a thread in each server process applying time-driven rollout transitions.

Every ``interval`` seconds it looks for running rollouts whose phase is due (see
:func:`controlplane.rollouts.machine.due`) and applies each with a compare-and-set, so that
when several replicas tick at once exactly one applies a given transition. These transitions
happen whether or not any sidecar reports (today only the blue/green switch); a canary step's
advance or promotion and the end of a blue/green shadow or watch phase are left to the window
reports, since they need the guards' verdict on the step's or phase's evidence.

A pass that fails (the database away) is logged once, then once a minute while the failures
go on (see :mod:`controlplane.failures`), and the passes back off to one every
:data:`MAX_BACKOFF_SECONDS`; the first pass that succeeds again is logged and the interval
restored.
"""

from __future__ import annotations

import threading

import structlog

from controlplane.failures import FailureStreak
from controlplane.rollouts.service import RolloutService
from modelplane.errors import Unavailable

log = structlog.get_logger("modelplane.controlplane.rollouts")

#: The longest pause between passes while they fail (the interval when that is longer).
MAX_BACKOFF_SECONDS = 5.0


class Reconciler:
    """Ticks :meth:`RolloutService.tick` on a daemon thread; :meth:`close` stops it."""

    def __init__(self, rollouts: RolloutService, interval: float) -> None:
        self.rollouts = rollouts
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Reconciler:
        self._thread = threading.Thread(target=self._run, name="rollout-reconciler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        streak = FailureStreak()
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                self.rollouts.tick()
            except Exception as exc:
                # Backing off: a database that is away is asked less and less often.
                failed = streak.count + 1
                longest = max(self.interval, MAX_BACKOFF_SECONDS)
                wait = min(longest, self.interval * 2 ** min(failed, 20))
                if not streak.failed():
                    continue
                if isinstance(exc, Unavailable):
                    log.warning(
                        "rollout reconciler pass failed; retrying with backoff",
                        error=str(exc),
                        failed_passes=failed,
                    )
                else:
                    log.exception("rollout reconciler pass failed", failed_passes=failed)
                continue
            if failed := streak.succeeded():
                log.info("rollout reconciler passes succeed again", failed_passes=failed)
                wait = self.interval

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
