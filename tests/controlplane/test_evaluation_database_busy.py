"""An evaluation whose writes meet a database busy past its wait limit (another process holds
SQLite's write lock) is not ended by it: progress writes that fail are skipped, the result is
stored once the database answers again, a failure that could not be recorded is recorded then
(the operation held and its lease renewed meanwhile, not ended REPLICA_LOST), and only a result
still not stored at the time limit is lost, ABORTED (RESULT_NOT_STORED).

The wait limit (30 s in production) is 0.3 s here, and each evaluation waits at its start until
the lock is held, so that every write it makes meets it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.store import engine
from modelplane.testing.launch import prefix
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_evaluation_control import dataset, register, wait_done

#: How long a write waits for the lock before it fails UNAVAILABLE.
WRITE_LIMIT_MS = 300
LEASE_SECONDS = 2.0
#: How long the lock is held: the write limit many times over, and past the lease.
HOLD_SECONDS = 4.0

_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
for line in sys.stdin:
    conn.execute("BEGIN IMMEDIATE" if line.strip() == "lock" else "ROLLBACK")
    print("ok", flush=True)
"""


class LockHolder:
    """Another process that takes SQLite's write lock (``BEGIN IMMEDIATE``, as another program
    on the database would, past the server's write gate) and lets go, on command."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [*prefix(), sys.executable, "-c", _HOLDER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def lock(self) -> None:
        self._say("lock")

    def release(self) -> None:
        self._say("release")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Busy:
    """A control plane on SQLite with the short write limit, the other process that holds the
    lock, and the gate evaluations wait at."""

    cp: RunningControlPlane
    holder: LockHolder
    entered: threading.Event
    go: threading.Event
    data: Path

    def evaluate_while_locked(self, label: str = "target") -> tuple[Any, Any, str, int]:
        """Start an evaluation, take the lock before it makes any write of its own, hold it
        for HOLD_SECONDS, then let go; returns the operation as it stood just before the lock
        was let go, as it ended, and the model and version."""
        with self.cp.client() as c:
            model_id, version = register(c, self.data.parent, 1)
            op = c.evaluate(
                model_id, version, self.data, label=label, compare_to="-", request_id="ci-1"
            )
            assert self.entered.wait(30), "the evaluation did not start"
            self.holder.lock()
            try:
                self.go.set()
                time.sleep(HOLD_SECONDS)
                during = c.get_operation(op.name)  # reads are not blocked by the lock
            finally:
                self.holder.release()
            return during, wait_done(c, op.name), model_id, version


@pytest.fixture
def busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Busy]:
    import controlplane.evaluation as evaluation

    # Read as each connection opens: every connection of the server started below.
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", WRITE_LIMIT_MS)
    entered, go = threading.Event(), threading.Event()
    real = evaluation.evaluate

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert go.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", gated)
    db = tmp_path / "cp.db"
    overrides = getattr(request, "param", {})
    cp = start_controlplane(
        tmp_path,
        f"sqlite:///{db}",
        evaluation_workers=1,
        operation_lease_seconds=LEASE_SECONDS,
        **overrides,
    )
    holder = LockHolder(db)
    try:
        yield Busy(cp, holder, entered, go, dataset(tmp_path))
    finally:
        go.set()
        holder.close()
        cp.handle.stop(0)


def test_a_result_is_stored_once_the_database_answers_again(busy: Busy) -> None:
    during, ended, model_id, version = busy.evaluate_while_locked()
    # Not one of its writes went through while the lock was held, its first progress included.
    assert not during.done and during.owner and during.progress_message == ""
    assert ended.done and not ended.HasField("error"), ended.error
    assert ended.progress == 1.0
    with busy.cp.client() as c:
        stored = c.operation_result(ended)
        assert [e.name for e in c.list_evaluations(model_id, version)] == [stored.name]
        # A CI retry under the same request id gets this operation and its result.
        again = c.evaluate(
            model_id, version, busy.data, label="target", compare_to="-", request_id="ci-1"
        )
        assert again.name == ended.name and again.done and not again.HasField("error")


def test_a_failure_is_recorded_once_the_database_answers_again(busy: Busy) -> None:
    during, ended, _, _ = busy.evaluate_while_locked(label="no-such-column")
    # Held meanwhile, its lease renewed once the lock went: not ended REPLICA_LOST.
    assert not during.done and during.owner
    assert ended.done
    assert (ended.error.code, ended.error.reason) == ("INVALID_ARGUMENT", "MISSING_LABEL_COLUMN")
    assert ended.owner == ""


@pytest.mark.parametrize("busy", [{"evaluation_timeout_seconds": 3.0}], indirect=True)
def test_a_result_not_stored_by_the_time_limit_is_lost(busy: Busy) -> None:
    during, ended, model_id, version = busy.evaluate_while_locked()
    assert not during.done
    assert (ended.error.code, ended.error.reason) == ("ABORTED", "RESULT_NOT_STORED")
    assert "could not be stored" in ended.error.message
    assert "start it again with a new request id" in ended.error.message
    with busy.cp.client() as c:
        assert list(c.list_evaluations(model_id, version)) == []
