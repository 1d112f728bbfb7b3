"""Retraining commands: their environment, their pipes, and killing a command's whole session
at its deadline (see :mod:`controlplane.rollouts.hooks`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from typing import IO, Any

EVENT_ENV = "MODELPLANE_DRIFT_EVENT"
#: The largest event (JSON bytes) also put in ``MODELPLANE_DRIFT_EVENT``: below Linux's limit
#: on one environment string (128 KiB, ``MAX_ARG_STRLEN``), name and '=' included.
MAX_ENV_EVENT = 100_000
#: Settings variables kept from a retraining command's environment.
SETTINGS_PREFIX = "MODELPLANE_"
#: Bytes of a failed command's stderr that are logged (its end).
STDERR_TAIL = 500
#: How often a command's pipe threads look whether it was given up on (seconds).
PIPE_POLL_SECONDS = 0.1
#: How long a timed-out command's session is killed again while some process of it is left.
KILL_SECONDS = 5.0


def command_env(body: bytes) -> dict[str, str]:
    """A retraining command's environment: the server's, less its ``MODELPLANE_*`` settings
    (secrets such as the database URL), plus the event in ``MODELPLANE_DRIFT_EVENT`` when it
    is at most :data:`MAX_ENV_EVENT` bytes (stdin always carries it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    if len(body) <= MAX_ENV_EVENT:
        env[EVENT_ENV] = body.decode()
    return env


def _ready(fd: int, events: int, stop: threading.Event) -> bool:
    """Wait until ``fd`` is ready for ``events`` (or its other end is closed); False once
    ``stop`` is set, looked at every :data:`PIPE_POLL_SECONDS`."""
    poller = select.poll()
    poller.register(fd, events)
    while not stop.is_set():
        if poller.poll(PIPE_POLL_SECONDS * 1000):
            return True
    return False


def _feed(pipe: IO[bytes], body: bytes, stop: threading.Event) -> None:
    """Write ``body`` to a command's stdin and close it; a command that exits without
    reading it all is no error, and once ``stop`` is set (a process outside the command's
    session may hold the pipe) the rest is dropped."""
    with contextlib.suppress(OSError), pipe:
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        view = memoryview(body)
        while view and _ready(fd, select.POLLOUT, stop):
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view) :]


class _Tail(threading.Thread):
    """Reads a pipe to its end, or until ``stop`` is set, keeping only its last
    :data:`STDERR_TAIL` bytes."""

    def __init__(self, pipe: IO[bytes], stop: threading.Event) -> None:
        super().__init__(name="hook-err", daemon=True)
        self.pipe = pipe
        self.stop = stop
        self.tail = b""

    def run(self) -> None:
        with contextlib.suppress(OSError), self.pipe:
            fd = self.pipe.fileno()
            os.set_blocking(fd, False)
            while _ready(fd, select.POLLIN, self.stop):
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self.tail = (self.tail + chunk)[-STDERR_TAIL:]


def _session(sid: int) -> list[int]:
    """The live processes (zombies left out) of session ``sid``, from each process's
    ``/proc/PID/stat`` (its sixth field)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # After the command name, which is in parentheses and may hold anything:
                # state, ppid, pgrp, session, ...
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if fields[0] not in (b"Z", b"X") and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _kill_session(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL every process of the session that ``proc`` leads (started with a session of
    its own, whose id is its pid), again while any is left (one may have forked meanwhile),
    for at most :data:`KILL_SECONDS`; the number still left then."""
    if not os.path.isdir("/proc"):  # not Linux: its process group only
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        return 0
    give_up = time.monotonic() + KILL_SECONDS
    while pids := _session(proc.pid):
        if time.monotonic() > give_up:
            return len(pids)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return 0


def run(deployment_id: str, argv: list[str], body: bytes, timeout: float, log: Any) -> None:
    """Run the deployment's command on ``body`` within ``timeout`` seconds in all, logging the
    outcome through ``log``."""
    try:
        # A session of its own: on timeout its children are killed with it. Its stdout
        # goes nowhere and only the last STDERR_TAIL bytes of its stderr are kept (a
        # chatty command is never held in memory whole); the end of stderr is logged.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=command_env(body),
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("retraining command failed", deployment=deployment_id, error=str(exc))
        return
    assert proc.stdin is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    threading.Thread(
        target=_feed, args=(proc.stdin, body, stop), name="hook-in", daemon=True
    ).start()
    stderr = _Tail(proc.stderr, stop)
    stderr.start()
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        # Done once stderr is closed too: a process the command left behind in its
        # session that still holds it counts as the command still running.
        stderr.join(max(0.0, deadline - time.monotonic()))
        if proc.returncode is None or stderr.is_alive():
            left = _kill_session(proc)
            proc.wait()
            log.warning(
                "retraining command failed",
                deployment=deployment_id,
                error=f"still running after {timeout:g}s; killed",
            )
            if left:
                log.warning(
                    "retraining command's processes outlived SIGKILL",
                    deployment=deployment_id,
                    processes=left,
                )
            return
    finally:
        # Its pipes' threads end even when a process that left its session holds them.
        stop.set()
    if proc.returncode != 0:
        log.warning(
            "retraining command exited non-zero",
            deployment=deployment_id,
            code=proc.returncode,
            stderr=stderr.tail.decode(errors="replace"),
        )
    else:
        log.info("retraining command ran", deployment=deployment_id)
