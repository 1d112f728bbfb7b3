"""Several server processes on one port (SO_REUSEPORT) under one supervisor.

The supervisor reserves the port (so that port 0 resolves once for all workers), starts each
worker as ``python -m MODULE`` with its settings in the environment, waits until every worker
printed its ready line, serves one Prometheus endpoint merging the workers' values
(prometheus_client multiprocess mode), forwards SIGTERM/SIGINT so every worker drains, and
exits 0 once all have stopped after a signal (1 when a worker failed).
"""

from __future__ import annotations

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


def reserve_port(listen: str) -> tuple[socket.socket, int]:
    """Bind ``HOST:PORT`` with SO_REUSEPORT and keep it bound; returns the socket and port."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    return sock, int(sock.getsockname()[1])


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
    merged metrics port (None without ``metrics_listen``) once all are ready.
    """
    metrics_dir = tempfile.mkdtemp(prefix="modelplane-metrics-") if metrics_listen else None
    env = dict(env)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    procs: list[subprocess.Popen[str]] = []
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
            log.error("worker exited", pid=proc.pid, code=code)
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
            proc = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, text=True
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


def _wait_all(procs: list[subprocess.Popen[str]], seconds: float) -> list[int]:
    """Exit codes of ``procs``, waiting ``seconds`` in all; a process still running then is
    killed (a worker stuck in its shutdown must not keep the supervisor alive)."""
    deadline = time.monotonic() + seconds
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it", pid=p.pid)
            p.kill()
            codes.append(p.wait())
    return codes


def worker_count(requested: int) -> int:
    """``requested`` workers, or one per core this process may use for 0 (its affinity and
    cgroup CPU quota: :mod:`modelplane.server.cpus`)."""
    return requested if requested > 0 else available_cores()
