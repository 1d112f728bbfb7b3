"""``--workers N``: N server processes on one port (SO_REUSEPORT), one supervisor.

Each worker is a full sidecar process (own ONNX Runtime session, batcher and metrics) started
as ``python -m sidecar.workers`` with its settings in ``MODELPLANE_SIDECAR_*`` variables. The
supervisor reserves the port, waits until every worker is ready before it announces itself,
serves one Prometheus endpoint that merges the workers' values (prometheus_client
multiprocess mode), forwards SIGTERM so every worker drains, and exits 0 once all have.

With a prediction log, every worker writes its own files into the one log directory (the
file names carry the worker's pid, so readers see one log). Drift is monitored per worker:
each counts the rows it served, its gauges carry a ``pid`` label, and the admin RPC answers
for the worker the call reached.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

import structlog

from sidecar.predlog.settings import PredictionLogSettings
from sidecar.settings import SidecarSettings

log = structlog.get_logger("modelplane.sidecar.workers")

_PREFIX = "MODELPLANE_SIDECAR_"
_LOG_PREFIX = "MODELPLANE_LOG_"


def _reserve_port(listen: str) -> tuple[socket.socket, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    return sock, sock.getsockname()[1]


def _env_value(value: Any) -> str:
    if isinstance(value, bool | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _worker_env(
    settings: SidecarSettings,
    port: int,
    metrics_dir: str | None,
    log_settings: PredictionLogSettings | None = None,
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_PREFIX) and not k.startswith(_LOG_PREFIX)
    }
    host = settings.listen.rpartition(":")[0]
    values = settings.model_dump(exclude={"metrics_listen"})
    values.update(listen=f"{host}:{port}", workers="1", worker=True)
    for key in ("max_queue_delay", "drain_seconds", "drift_window"):
        if values[key] is not None:
            values[key] = f"{values[key] * 1e9:.0f}ns"
    for key, value in values.items():
        if value is not None:
            env[_PREFIX + key.upper()] = _env_value(value)
    if log_settings is not None and log_settings.dir is not None:
        # Each worker opens its own files in the same directory (file names carry the pid).
        for key, value in log_settings.model_dump().items():
            if key == "retention" and value is None:
                value = "none"
            elif key in ("flush_interval", "rotate_age", "retention"):
                value = f"{value * 1e9:.0f}ns"
            if value is not None:
                env[_LOG_PREFIX + key.upper()] = _env_value(value)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def supervise(
    settings: SidecarSettings, count: int, log_settings: PredictionLogSettings | None = None
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit code."""
    from sidecar.server import announce

    sock, port = _reserve_port(settings.listen)
    metrics_dir = (
        tempfile.mkdtemp(prefix="modelplane-metrics-") if settings.metrics_listen else None
    )
    env = _worker_env(settings, port, metrics_dir, log_settings)
    procs: list[subprocess.Popen[str]] = []
    ready = threading.Semaphore(0)
    stopping = threading.Event()
    failed = threading.Event()

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"sidecar ready"' in line:
                ready.release()
        code = proc.wait()
        if not stopping.is_set():
            log.error("worker exited", pid=proc.pid, code=code)
            failed.set()
            ready.release()

    def stop_all(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        stopping.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    httpd = None
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.workers"],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            threading.Thread(target=relay, args=(proc,), daemon=True).start()
        for _ in range(count):
            ready.acquire()
            if failed.is_set():
                stop_all()
                return 1
        metrics_port = None
        if settings.metrics_listen and metrics_dir:
            httpd, metrics_port = _serve_merged_metrics(settings.metrics_listen, metrics_dir)
        signal.signal(signal.SIGTERM, stop_all)
        signal.signal(signal.SIGINT, stop_all)
        announce(settings, port, metrics_port=metrics_port, workers=count, pid=os.getpid())
        while any(p.poll() is None for p in procs):
            if failed.wait(0.2) and not stopping.is_set():
                stop_all()
                break
        codes = [p.wait() for p in procs]
        return 0 if stopping.is_set() and not failed.is_set() and not any(codes) else 1
    finally:
        stop_all()
        for p in procs:
            try:
                p.wait(settings.drain_seconds + 5)
            except subprocess.TimeoutExpired:
                p.kill()
        if httpd is not None:
            httpd.shutdown()
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_merged_metrics(listen: str, metrics_dir: str) -> tuple[Any, int]:
    from prometheus_client import CollectorRegistry, multiprocess

    from modelplane.server.lifecycle import serve_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    return serve_metrics(listen, registry)


def main() -> int:
    """Entry point of one worker process (settings from the environment)."""
    from modelplane.server.logging import configure_logging
    from sidecar.server import serve_one

    settings = SidecarSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    log_settings = PredictionLogSettings() if os.environ.get(_LOG_PREFIX + "DIR") else None
    return serve_one(settings, log_settings)


if __name__ == "__main__":
    sys.exit(main())
