"""Several server processes on one port (SO_REUSEPORT) under one supervisor.

The supervisor reserves the port (so that port 0 resolves once for all workers), starts each
worker as ``python -m MODULE`` with its settings in the environment, waits until every worker
printed its ready line, serves one Prometheus endpoint merging the workers' values
(prometheus_client multiprocess mode), forwards SIGTERM/SIGINT so every worker drains, and
exits 0 once all have stopped after a signal (1 when a worker failed).

Health is answered per connection, and the kernel spreads connections over the workers: a
worker that calls :func:`hold_until_all_ready` keeps its health NOT_SERVING once warm until
the supervisor has seen every worker ready, and the supervisor announces itself (``on_ready``)
only once each such worker says SERVING. Each worker gets one end of a socket pair
(:data:`READY_FD_ENV`) for it: ``h`` (worker: holding, sent before its ready line), ``r``
(supervisor: all ready), ``s`` (worker: SERVING now).

Workers end with their supervisor however it ends (SIGKILL, a crash, the OOM killer): each
worker calls :func:`die_with_supervisor` first thing, which has the kernel send it SIGTERM
when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a thread watching the parent pid),
so it drains as on a forwarded SIGTERM instead of serving on the port as an orphan. The
metrics folder of a supervisor that was killed is removed by the next supervisor's start
once no process of the dead one holds its lock any more.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from modelplane.server.cpus import available_cores

log = structlog.get_logger("modelplane.supervisor")

#: The supervisor's pid, in its workers' environment.
SUPERVISOR_PID_ENV = "MODELPLANE_SUPERVISOR_PID"
METRICS_DIR_PREFIX = "modelplane-metrics-"
#: In a metrics folder: shared-locked by its supervisor and every worker while they live.
_LOCK_FILE = ".lock"
_PR_SET_PDEATHSIG = 1
#: A worker's hold on its metrics folder, kept open for the life of the process.
_held: list[int] = []
#: The descriptor of a worker's end of its socket pair to the supervisor, in its environment.
READY_FD_ENV = "MODELPLANE_SUPERVISOR_READY_FD"
_HOLDING, _ALL_READY, _SERVING = b"h", b"r", b"s"


def hold_dir(path: str, *, create: bool = False) -> int | None:
    """Take a shared lock on the supervisor's folder ``path`` (its metrics folder, or another
    folder its workers share; the supervisor ``create``s its lock file); returns the
    descriptor holding it, None when the folder has no lock file."""
    lock = os.path.join(path, _LOCK_FILE)
    try:
        if not create:
            fd = os.open(lock, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)
            return fd
        # Locked before it gets its name: a sweep never sees it unlocked.
        fd = os.open(lock + ".new", os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(lock + ".new", lock)
        return fd
    except OSError:
        return None


def sweep_stale_metrics_dirs(root: str | None = None) -> None:
    """Remove this user's metrics folders that no live supervisor or worker holds (left by a
    supervisor that was killed): see :func:`sweep_stale_dirs`."""
    sweep_stale_dirs(METRICS_DIR_PREFIX, "metrics folder", root)


def sweep_stale_dirs(prefix: str, what: str, root: str | None = None) -> None:
    """Remove this user's folders named ``prefix*`` under ``root`` (the temporary folder by
    default) that no live supervisor or worker holds (:func:`hold_dir`): a folder is
    removed only while its lock can be taken exclusively, so a folder in use, or one without
    a lock file, stays."""
    base = root or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # in use
        else:
            log.info(f"removing the {what} of a supervisor that was killed", path=path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux);
    False where that cannot be had."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """A daemon thread sending this process SIGTERM once its parent is no longer ``parent``
    (it died and the process was re-parented); where no parent-death signal exists."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        log.error("supervisor ended; stopping", supervisor_pid=parent)

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


def die_with_supervisor() -> None:
    """In a worker process (first thing): get SIGTERM, and so drain and exit, when the
    supervisor that started it dies, and hold the shared metrics folder while alive. Does
    nothing in a process no supervisor started."""
    value = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not value.isdigit():
        return
    supervisor = int(value)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        fd = hold_dir(metrics_dir)
        if fd is not None:
            _held.append(fd)
    if not _parent_death_signal(signal.SIGTERM):
        watch_parent(supervisor)
    if os.getppid() != supervisor:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def hold_until_all_ready(release: Callable[[], None]) -> bool:
    """In a worker (before it prints its ready line): call ``release`` on a thread of its own
    once the supervisor has seen every worker ready, and have the supervisor wait for it
    before it announces itself. Returns False, calling nothing, in a process no supervisor
    started. ``release`` is never called when the supervisor stops or dies first."""
    value = os.environ.pop(READY_FD_ENV, "")
    if not value.isdigit():
        return False
    try:
        sock = socket.socket(fileno=int(value))
        sock.set_inheritable(False)
        sock.sendall(_HOLDING)
    except OSError:
        return False

    def wait() -> None:
        with sock:
            try:
                if sock.recv(1) != _ALL_READY:
                    return  # the supervisor stopped before every worker was ready
                release()
                sock.sendall(_SERVING)
            except OSError:
                pass

    threading.Thread(target=wait, name="all-ready", daemon=True).start()
    return True


def _release_workers(gates: list[socket.socket], given_up: Callable[[], bool]) -> None:
    """Tell each worker that holds its health (:func:`hold_until_all_ready`) that every worker
    is ready; return once each of them answered SERVING, ended, or ``given_up()``."""
    holding = []
    for sock in gates:
        sock.setblocking(False)
        try:
            # Sent before the worker's ready line, so here already; nothing from a worker
            # that does not hold its health.
            if sock.recv(1) == _HOLDING:
                sock.sendall(_ALL_READY)
                holding.append(sock)
        except OSError:
            pass  # nothing sent (BlockingIOError), or the worker ended: its relay says so
    while holding and not given_up():
        answered, _, _ = select.select(holding, [], [], 0.2)
        for sock in answered:
            with contextlib.suppress(OSError):
                sock.recv(1)  # SERVING, or b"" for a worker that ended
            holding.remove(sock)


def reserve_port(listen: str) -> tuple[socket.socket, int]:
    """Bind ``HOST:PORT`` with SO_REUSEPORT and keep it bound; returns the socket and port.

    A port some other process holds fails (OSError EADDRINUSE) as it does for one process,
    even when that process set SO_REUSEPORT too (another ``--workers`` server, left running):
    Linux would let this one join its port, and the two would split the connections between
    them. So the port is first bound without SO_REUSEPORT, which any listener on it refuses
    (SO_REUSEADDR only lets it past connections of an earlier server still in TIME_WAIT).
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))
        number = int(probe.getsockname()[1])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, number))
    except BaseException:
        sock.close()
        raise
    return sock, number


def serve_merged_metrics(listen: str, metrics_dir: str) -> tuple[Any, int]:
    """A Prometheus endpoint summing the metric files the workers write to ``metrics_dir``."""
    from prometheus_client import CollectorRegistry, multiprocess

    from modelplane.server.lifecycle import serve_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    return serve_metrics(listen, registry)


def supervise(
    *,
    module: str,
    env: dict[str, str],
    count: int,
    ready_marker: str,
    metrics_listen: str = "",
    drain_seconds: float = 10.0,
    on_ready: Callable[[int | None], None] = lambda _port: None,
) -> int:
    """Run ``count`` workers of ``module`` until a signal; returns the exit code.

    A worker is ready when a line of its stdout contains ``ready_marker``. ``on_ready`` gets the
    merged metrics port (None without ``metrics_listen``) once all are ready, and those that
    held their health (:func:`hold_until_all_ready`) say SERVING. Call it from the main
    thread: the workers' parent-death signal follows the thread that started them.
    """
    metrics_dir, dir_lock = None, None
    if metrics_listen:
        sweep_stale_metrics_dirs()
        metrics_dir = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
        dir_lock = hold_dir(metrics_dir, create=True)
    env = dict(env)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    if metrics_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    procs: list[subprocess.Popen[str]] = []
    gates: list[socket.socket] = []
    ready = threading.Semaphore(0)
    stopping = threading.Event()
    failed = threading.Event()

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if ready_marker in line:
                ready.release()
        code = proc.wait()
        if not stopping.is_set():
            log.error("worker exited", worker_pid=proc.pid, code=code)
            failed.set()
            ready.release()

    def stop_all(_signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        stopping.set()
        ready.release()  # a start still waiting for workers gives up
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    httpd = None
    # From the first worker on: a signal during start-up must stop the workers started so
    # far, not kill this process and leave them running.
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    try:
        for _ in range(count):
            if stopping.is_set():
                break
            ours, theirs = socket.socketpair()
            gates.append(ours)
            with theirs:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env={**env, READY_FD_ENV: str(theirs.fileno())},
                    stdout=subprocess.PIPE,
                    text=True,
                    pass_fds=(theirs.fileno(),),
                )
            procs.append(proc)
            threading.Thread(target=relay, args=(proc,), daemon=True).start()
        for _ in range(count):
            ready.acquire()
            if failed.is_set():
                stop_all()
                return 1
            if stopping.is_set():
                return 0
        _release_workers(gates, lambda: failed.is_set() or stopping.is_set())
        if failed.is_set():
            stop_all()
            return 1
        if stopping.is_set():
            return 0
        metrics_port = None
        if metrics_listen and metrics_dir:
            httpd, metrics_port = serve_merged_metrics(metrics_listen, metrics_dir)
        on_ready(metrics_port)
        while any(p.poll() is None for p in procs) and not stopping.is_set():
            if failed.wait(0.2) and not stopping.is_set():
                stop_all()
                break
        codes = _wait_all(procs, drain_seconds + 5)
        return 0 if stopping.is_set() and not failed.is_set() and not any(codes) else 1
    finally:
        stop_all()
        _wait_all(procs, drain_seconds + 5)
        if httpd is not None:
            httpd.shutdown()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if dir_lock is not None:
            os.close(dir_lock)
        for gate in gates:
            gate.close()


def _wait_all(procs: list[subprocess.Popen[str]], seconds: float) -> list[int]:
    """Exit codes of ``procs``, waiting ``seconds`` in all; a process still running then is
    killed (a worker stuck in its shutdown must not keep the supervisor alive)."""
    deadline = time.monotonic() + seconds
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it", worker_pid=p.pid)
            p.kill()
            codes.append(p.wait())
    return codes


def worker_count(requested: int) -> int:
    """``requested`` workers, or one per core this process may use for 0 (its affinity and
    cgroup CPU quota: :mod:`modelplane.server.cpus`)."""
    return requested if requested > 0 else available_cores()
