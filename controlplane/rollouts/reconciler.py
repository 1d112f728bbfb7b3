"""The reconciler: a thread in each server process applying time-driven rollout transitions.

Every ``interval`` seconds it looks for running rollouts whose phase is due (see
:func:`controlplane.rollouts.machine.due`) and applies each with a compare-and-set, so that
when several replicas tick at once exactly one applies a given transition. These transitions
happen whether or not any sidecar reports (today only the blue/green switch); a canary step's
advance or promotion and the end of a blue/green shadow or watch phase are left to the window
reports, since they need the guards' verdict on the step's or phase's evidence.
"""

from __future__ import annotations

import threading

import structlog

from controlplane.rollouts.service import RolloutService

log = structlog.get_logger("modelplane.controlplane.rollouts")


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
        while not self._stop.wait(self.interval):
            try:
                self.rollouts.tick()
            except Exception:
                log.exception("rollout reconciler pass failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
