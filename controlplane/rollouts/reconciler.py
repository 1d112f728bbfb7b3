"""The reconciler: a thread in each server process applying time-driven rollout transitions.

Every ``interval`` seconds it looks for running rollouts whose phase is due (see
:func:`controlplane.rollouts.machine.due`) and applies each with a compare-and-set, so that
when several replicas tick at once exactly one applies a given transition. These transitions
happen whether or not any sidecar reports (today only the blue/green switch); a canary step's
advance or promotion and the end of a blue/green shadow or watch phase are left to the window
reports, since they need the guards' verdict on the step's or phase's evidence.

A pass that fails (the database away) is logged once, then once a minute while the failures
go on, and the passes back off to one every :data:`MAX_BACKOFF_SECONDS`; the first pass that
succeeds again is logged and the interval restored.
"""

from __future__ import annotations

import threading
import time

import structlog

from controlplane.rollouts.service import RolloutService
from modelplane.errors import Unavailable

log = structlog.get_logger("modelplane.controlplane.rollouts")

#: The longest pause between passes while they fail (the interval when that is longer).
MAX_BACKOFF_SECONDS = 5.0
#: How often a failure that goes on is logged again.
REPEAT_LOG_SECONDS = 60.0


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
        failed = 0  # passes failed in a row
        said = 0.0  # when the failure was last logged
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                self.rollouts.tick()
            except Exception as exc:
                failed += 1
                # Backing off, and logged when it starts and then once a minute: a database
                # that is away must not fill the log with a traceback per pass.
                wait = min(
                    max(self.interval, MAX_BACKOFF_SECONDS), self.interval * 2 ** min(failed, 20)
                )
                now = time.monotonic()
                if failed == 1 or now - said >= REPEAT_LOG_SECONDS:
                    said = now
                    if isinstance(exc, Unavailable):
                        log.warning(
                            "rollout reconciler pass failed; retrying with backoff",
                            error=str(exc),
                            failed_passes=failed,
                        )
                    else:
                        log.exception("rollout reconciler pass failed", failed_passes=failed)
                continue
            if failed:
                log.info("rollout reconciler passes succeed again", failed_passes=failed)
                failed, wait = 0, self.interval

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
