"""The rollout reconciler while PostgreSQL is away: a real control plane whose database is
renamed from under it logs the failing passes once (a warning, no traceback) instead of once per
pass, backs off, and says so when its passes succeed again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.controlplane.conftest import start_controlplane

pytestmark = pytest.mark.timeout(120)


class _Log:
    """Stands in for the reconciler's logger: keeps what it logs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append({"level": "warning", "event": event, **fields})

    def info(self, event: str, **fields: Any) -> None:
        self.events.append({"level": "info", "event": event, **fields})

    def exception(self, event: str, **fields: Any) -> None:
        self.events.append({"level": "exception", "event": event, **fields})


def _rename(old: str, new: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,)
        )
        admin.execute(f'ALTER DATABASE "{old}" RENAME TO "{new}"')


def test_a_database_outage_is_logged_once_and_the_recovery_too(
    tmp_path: Path, own_database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane.rollouts import reconciler

    logged = _Log()
    monkeypatch.setattr(reconciler, "log", logged)
    name, url = own_database
    cp = start_controlplane(tmp_path, url, reconcile_interval_seconds=0.02)
    try:
        time.sleep(0.3)
        assert logged.events == []
        _rename(name, f"{name}_away")
        # At one pass per 20 ms, 2 s would be about 100 failed passes.
        time.sleep(2.0)
        failures = [e for e in logged.events if e["level"] != "info"]
        assert [(e["level"], e["failed_passes"]) for e in failures] == [("warning", 1)]
        assert "retrying with backoff" in failures[0]["event"]
        assert failures[0]["error"]
        _rename(f"{name}_away", name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["level"] == "info" for e in logged.events):
            time.sleep(0.1)
        [recovered] = [e for e in logged.events if e["level"] == "info"]
        # Backed off: far fewer passes failed than 20 ms passes would have made.
        assert 1 < recovered["failed_passes"] < 40, recovered
        assert len([e for e in logged.events if e["level"] != "info"]) == 1
    finally:
        cp.handle.stop(0)


def test_a_failure_streak_is_logged_first_then_once_per_period() -> None:
    from controlplane.failures import FailureStreak

    streak = FailureStreak(repeat_seconds=0.2)
    said = [streak.failed() for _ in range(5)]
    assert said == [True, False, False, False, False] and streak.count == 5
    time.sleep(0.25)
    assert streak.failed() and not streak.failed()
    assert streak.succeeded() == 7 and streak.succeeded() == 0
    assert streak.failed()  # a new streak is said at once
