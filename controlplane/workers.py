"""``--workers N``: several control-plane processes on one port.

The replicas share nothing but the database and the artifact root, exactly as replicas on
several machines do (optimistic concurrency by etag, leases on operations, the audit chain's
lock), so one machine can use all its cores. The supervisor checks the access settings and
the hooks file, migrates the database and creates the signing key once, then starts the
workers (``python -m controlplane.workers``) with their settings in ``MODELPLANE_*``
variables.
"""

from __future__ import annotations

import json
import os
import sys

import structlog

from controlplane.settings import ControlPlaneSettings

log = structlog.get_logger("modelplane.controlplane.workers")

READY = "control plane ready"


def _env(settings: ControlPlaneSettings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    values = settings.model_dump()
    host = settings.listen.rpartition(":")[0]
    values.update(listen=f"{host}:{port}", metrics_listen="", workers=1, reuse_port=True)
    for key, value in values.items():
        env[f"MODELPLANE_{key.upper()}"] = (
            json.dumps(value) if isinstance(value, bool) else str(value)
        )
    return env


def supervise(settings: ControlPlaneSettings, count: int) -> int:
    """Prepare shared state once, then run ``count`` worker processes until a signal."""
    from controlplane import auth
    from controlplane.objectstore import open_blob_store
    from controlplane.rollouts.hooks import load_commands
    from controlplane.server import check_database, signing_keys
    from controlplane.store import Store
    from modelplane.server.supervisor import reserve_port
    from modelplane.server.supervisor import supervise as run_workers

    auth.build(settings)  # refuses unusable access settings before anything starts
    load_commands(settings.hooks_file)  # and a hooks file the workers could not load
    check_database(settings)  # an empty database over stored blobs, before migrating it
    Store.open(settings.db_url).close()
    signing_keys(settings)
    # And an artifact root the workers could not open (a bucket missing, a store away).
    open_blob_store(settings.artifact_root, settings.max_upload_bytes)
    try:
        sock, port = reserve_port(settings.listen)
    except OSError as exc:
        raise OSError(exc.errno, f"--listen {settings.listen}: {exc.strerror}") from None
    try:

        def ready(metrics_port: int | None) -> None:
            log.info("control plane serving", port=port, workers=count, metrics_port=metrics_port)

        return run_workers(
            module="controlplane.workers",
            env=_env(settings, port),
            count=count,
            ready_marker=READY,
            metrics_listen=settings.metrics_listen,
            drain_seconds=settings.shutdown_delay_seconds + settings.grace_seconds,
            on_ready=ready,
        )
    finally:
        sock.close()


def main() -> int:
    """One worker process (settings from the environment)."""
    from modelplane.server.supervisor import die_with_supervisor

    die_with_supervisor()
    from controlplane.server import start
    from modelplane.server import configure_logging
    from modelplane.server.lifecycle import hold_stop_signals

    settings = ControlPlaneSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    hold_stop_signals()
    handle = start(settings, migrate=False)  # the supervisor migrated the database
    handle.stop_on_signals()
    print(json.dumps({"event": READY, "port": handle.port, "pid": os.getpid()}), flush=True)
    handle.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
