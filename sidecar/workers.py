"""``--workers N``: N server processes on one port (SO_REUSEPORT), one supervisor.

Each worker is a full sidecar process (own ONNX Runtime session, batcher and metrics) started
as ``python -m sidecar.workers`` with its settings in ``MODELPLANE_SIDECAR_*`` variables. The
supervisor reserves the port, waits until every worker is ready before it announces itself,
serves one Prometheus endpoint that merges the workers' values (prometheus_client
multiprocess mode), forwards SIGTERM so every worker drains, and exits 0 once all have. A
worker that fails for good (its prediction log or its observer process) stops and exits 1,
and the supervisor then stops the others and exits 1.

In managed mode (``--control-plane``) every worker is a replica of its own: it watches the
deployment, loads the versions and reports its windows independently (``--replica NAME``
becomes ``NAME-<pid>``), and the control plane merges the replicas' reports as it merges
pods'. The workers share one verified-artifact cache. An ``IngestLabels`` call lands on one
worker, which joins its labels with every worker's predictions over Unix sockets in a folder
the supervisor makes for them (:mod:`sidecar.managed.peers`): one call per sidecar joins them
all, however many workers it has.

With a prediction log, every worker writes its own files into the one log directory (the
file names carry the worker's pid, so readers see one log). Drift is monitored per worker:
each counts the rows it served, its gauges carry a ``pid`` label (its observer process's
under ``--observer-mode process``; the report's ``gauges_pid`` names it), and the admin RPC
answers for the worker the call reached.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from modelplane.errors import ModelplaneError
from sidecar.predlog.settings import PredictionLogSettings
from sidecar.predlog.writer import check_directory
from sidecar.settings import SidecarSettings

log = structlog.get_logger("modelplane.sidecar.workers")

_PREFIX = "MODELPLANE_SIDECAR_"
#: The folder of a managed sidecar's worker sockets (:mod:`sidecar.managed.peers`).
PEERS_DIR_PREFIX = "modelplane-workers-"
_LOG_PREFIX = "MODELPLANE_LOG_"


def _env_value(value: Any) -> str:
    if isinstance(value, bool | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _seconds(value: float) -> str:
    """``value`` seconds as a duration that parses back to the same float (``30s``, not
    ``30000000000ns``, which comes back as 30.000000000000004)."""
    return np.format_float_positional(value, trim="-") + "s"


#: Settings whose None (``off``) differs from their default.
_DRIFT_THRESHOLDS = frozenset({"drift_psi", "drift_ks_pvalue", "drift_chi2_pvalue"})


def _worker_env(
    settings: SidecarSettings, port: int, log_settings: PredictionLogSettings | None = None
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_PREFIX) and not k.startswith(_LOG_PREFIX)
    }
    host = settings.listen.rpartition(":")[0]
    values = settings.model_dump(exclude={"metrics_listen"})
    values.update(listen=f"{host}:{port}", workers="1", worker=True)
    for key in ("max_queue_delay", "drain_seconds", "shutdown_delay", "drift_window"):
        if values[key] is not None:
            values[key] = _seconds(values[key])
    for key, value in values.items():
        if value is None and key in _DRIFT_THRESHOLDS:
            # A threshold turned off must stay off: left out, a worker takes the default.
            value = "off"
        if value is not None:
            env[_PREFIX + key.upper()] = _env_value(value)
    if log_settings is not None and log_settings.dir is not None:
        # Each worker opens its own files in the same directory (file names carry the pid).
        for key, value in log_settings.model_dump().items():
            if key == "retention" and value is None:
                value = "none"
            elif key in ("flush_interval", "rotate_age", "retention"):
                value = _seconds(value)
            if value is not None:
                env[_LOG_PREFIX + key.upper()] = _env_value(value)
    return env


def supervise(
    settings: SidecarSettings, count: int, log_settings: PredictionLogSettings | None = None
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit code."""
    from modelplane.server.supervisor import (
        hold_dir,
        reserve_port,
        sweep_stale_dirs,
    )
    from modelplane.server.supervisor import supervise as run_workers
    from sidecar.cuda import gpu_present
    from sidecar.managed.artifacts import temporary_cache
    from sidecar.mps import for_workers
    from sidecar.server import announce

    remove_cache = None
    if (
        settings.managed
        and settings.cache_dir is None
        and (log_settings is None or log_settings.dir is None)
    ):
        # One verified-artifact cache for all workers: what one downloaded, the others reuse.
        shared_cache, remove_cache = temporary_cache()
        settings = settings.model_copy(update={"cache_dir": shared_cache})
    peers_dir, peers_lock = None, None
    if settings.managed:
        # Mode 0700: only this sidecar's processes reach its workers' label service. A Unix
        # socket's path has at most 107 bytes: under a long TMPDIR the folder goes in /tmp.
        base = "/tmp" if len(tempfile.gettempdir()) > 64 else None
        # Held (locked) while this supervisor lives: the next one removes it after a kill.
        sweep_stale_dirs(PEERS_DIR_PREFIX, "workers' socket folder", base)
        peers_dir = Path(tempfile.mkdtemp(prefix=PEERS_DIR_PREFIX, dir=base))
        peers_lock = hold_dir(str(peers_dir), create=True)
        settings = settings.model_copy(update={"peers_dir": peers_dir})
    mps = None
    try:
        if log_settings is not None and log_settings.dir is not None:
            # Here, once, rather than in each worker after its model's warm-up.
            check_directory(Path(log_settings.dir))
        # Before the workers: their CUDA contexts must be made through the MPS server.
        on_gpu = settings.device != "cpu" and gpu_present()
        mps, mps_use = for_workers(settings.cuda_mps, on_gpu, count)
        sock, port = reserve_port(settings.listen)
        try:
            return run_workers(
                module="sidecar.workers",
                env={**_worker_env(settings, port, log_settings), **(mps.env if mps else {})},
                count=count,
                ready_marker='"sidecar ready"',
                metrics_listen=settings.metrics_listen or "",
                drain_seconds=settings.shutdown_delay + settings.drain_seconds,
                on_ready=lambda metrics_port: announce(
                    settings,
                    port,
                    metrics_port=metrics_port,
                    workers=count,
                    pid=os.getpid(),
                    cuda_mps=mps_use,
                ),
            )
        finally:
            sock.close()
    finally:
        if mps is not None:
            mps.stop()
        if remove_cache is not None:
            remove_cache()
        if peers_dir is not None:
            shutil.rmtree(peers_dir, ignore_errors=True)
        if peers_lock is not None:
            os.close(peers_lock)


def main() -> int:
    """Entry point of one worker process (settings from the environment)."""
    from modelplane.server.supervisor import die_with_supervisor

    die_with_supervisor()
    from modelplane.server.logging import configure_logging
    from sidecar.server import serve_one

    settings = SidecarSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    log_settings = PredictionLogSettings() if os.environ.get(_LOG_PREFIX + "DIR") else None
    try:
        return serve_one(settings, log_settings)
    except (ModelplaneError, OSError) as exc:
        # One line, as ``sidecar serve`` without workers prints it (the supervisor then says
        # which worker exited and stops the others).
        if isinstance(exc, ModelplaneError):
            line = f"error: ({exc.reason}) {exc.message}"
        else:
            line = f"error: cannot serve: {exc}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
