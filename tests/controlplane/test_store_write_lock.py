"""SQLite's write lock file held by another process (one stopped, or stuck, while it held it):
a write gives up at the wait limit with UNAVAILABLE and is never applied afterwards, a server
stopping ends the wait, and the lock is free again for the others once the holder lets go."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controlplane.services import ModelService
from controlplane.store import Store
from modelplane import Client, ModelplaneError, NotFound, Unavailable
from modelplane.server import RequestContext
from modelplane.testing import processes
from tests.conftest import unique

CTX = RequestContext(principal="ci")

_HOLDER = """
import fcntl, sys
f = open(sys.argv[1], "a+b")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``lock`` (stopped with SIGSTOP, as a frozen control plane
    would be) until the block ends, when it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        os.kill(holder.pid, signal.SIGSTOP)
        yield holder
    finally:
        holder.kill()
        holder.wait()


class Writer(threading.Thread):
    """Creates one model on a thread of its own, keeping the error it got."""

    def __init__(self, models: ModelService, name: str) -> None:
        super().__init__(daemon=True)
        self.models, self.name = models, name
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.models.create(CTX, self.name)
        except BaseException as exc:  # kept for the test to look at
            self.error = exc
        finally:
            self.done.set()


def _lock_is_free(lock: Path, within: float = 10.0) -> bool:
    """Whether ``lock`` can be taken (through a descriptor of its own) within ``within`` s."""
    end = time.monotonic() + within
    with open(lock, "a+b") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > end:
                    return False
                time.sleep(0.05)
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
                return True


def _missing(models: ModelService, name: str) -> bool:
    try:
        models.get(f"models/{name}")
    except NotFound:
        return True
    return False


def test_a_write_gives_up_at_the_limit_and_is_not_applied_later(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = Store.open(f"sqlite:///{db}")
    store.engines.write_gate.timeout = 1.0  # type: ignore[attr-defined]
    models = ModelService(store)
    try:
        with held_by_another_process(Path(f"{db}.write-lock")):
            late = Writer(models, unique())
            late.start()
            assert late.done.wait(20), "the write still waits past its limit"
            assert isinstance(late.error, Unavailable)
            assert late.error.reason == "DATABASE_UNAVAILABLE"
        # The holder is gone: the wait given up must not turn into a write, and must not keep
        # the lock from the others.
        assert _lock_is_free(Path(f"{db}.write-lock"))
        assert _missing(models, late.name)
        name = unique()
        models.create(CTX, name)
        assert models.get(f"models/{name}").id == name
        assert _missing(models, late.name)
    finally:
        store.close()


def test_a_later_writer_takes_over_a_wait_given_up(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = Store.open(f"sqlite:///{db}")
    gate = store.engines.write_gate
    models = ModelService(store)
    try:
        with held_by_another_process(Path(f"{db}.write-lock")):
            gate.timeout = 0.5  # type: ignore[attr-defined]
            first = Writer(models, unique())
            first.start()
            assert first.done.wait(20) and isinstance(first.error, Unavailable)
            gate.timeout = 60.0  # type: ignore[attr-defined]
            second = Writer(models, unique())
            second.start()
            assert not second.done.wait(0.5)
        # The holder let go: the writer waiting now gets the lock.
        assert second.done.wait(20)
        assert second.error is None
        assert models.get(f"models/{second.name}").id == second.name
        assert _missing(models, first.name)
        assert _lock_is_free(Path(f"{db}.write-lock"))
    finally:
        store.close()


def test_a_wait_for_the_lock_that_fails_fails_its_writer_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's wait itself may fail (ENOLCK on a network file system): the writer gets
    UNAVAILABLE then, not at its 30 s limit."""
    from controlplane.store import engine

    real = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:  # the blocking wait
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, operation)

    db = tmp_path / "cp.db"
    store = Store.open(f"sqlite:///{db}")
    models = ModelService(store)
    try:
        with held_by_another_process(Path(f"{db}.write-lock")):
            monkeypatch.setattr(engine.fcntl, "flock", flock)
            failed = Writer(models, unique())
            failed.start()
            # Well before the 30 s limit it would otherwise wait out.
            assert failed.done.wait(10), "the writer waits out its limit"
            assert isinstance(failed.error, Unavailable)
            monkeypatch.undo()
        assert _missing(models, failed.name)
    finally:
        store.close()


def test_closing_the_store_ends_a_writers_wait(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = Store.open(f"sqlite:///{db}")
    models = ModelService(store)
    with held_by_another_process(Path(f"{db}.write-lock")):
        waiting = Writer(models, unique())
        waiting.start()
        assert not waiting.done.wait(0.5)
        store.close()  # the server stopping; the limit (30 s) is far off
        assert waiting.done.wait(10), "closing the store left the write waiting"
        assert isinstance(waiting.error, Unavailable)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM models").fetchone() == (0,)


def _serve(tmp_path: Path) -> tuple[processes.Server, Path]:
    """A control plane process on SQLite in ``tmp_path`` (grace 1 s), serving; and its
    database file."""
    db = tmp_path / "cp.db"
    server = processes.controlplane(
        tmp_path, f"sqlite:///{db}", env={"MODELPLANE_GRACE_SECONDS": "1"}
    )
    return server.start(60), db


def test_a_write_whose_caller_gave_up_is_not_applied_when_the_lock_frees(
    tmp_path: Path,
) -> None:
    """The wait for the lock ends at the call's deadline (2 s), not at the 30 s limit: once the
    holder lets go, the write its caller was told had failed is not made."""
    server, db = _serve(tmp_path)
    try:
        with held_by_another_process(Path(f"{db}.write-lock")):
            with (
                Client(server.address, principal="alice", retries=1, timeout=2) as c,
                pytest.raises(ModelplaneError),
            ):
                c.create_model("late")
            time.sleep(1.0)  # past the deadline on the server's side too
        assert _lock_is_free(Path(f"{db}.write-lock"))
        with Client(server.address, principal="alice") as c:
            c.create_model("after")
            with pytest.raises(NotFound):
                c.get_model("late")
    finally:
        server.kill()


def test_a_stopped_lock_holder_neither_blocks_sigterm_nor_gets_a_write_applied(
    tmp_path: Path,
) -> None:
    server, db = _serve(tmp_path)
    assert server.proc is not None
    try:
        with held_by_another_process(Path(f"{db}.write-lock")):
            with (
                Client(server.address, principal="alice", retries=1, timeout=3) as c,
                pytest.raises(ModelplaneError),  # the client's deadline, well before 30 s
            ):
                c.create_model("waiting")
            server.proc.send_signal(signal.SIGTERM)
            # It exits within its grace, not once the lock's holder lets go.
            assert server.proc.wait(timeout=20) == 0
    finally:
        server.kill()
    assert any("gave up waiting" in x.get("event", "") for x in server.json_lines())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM models").fetchone() == (0,)
