"""``modelplane injector serve``: the Kubernetes sidecar-injection webhook.

The webhook's modules load only when ``serve`` runs, so the light CLI stays light.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from modelplane.cli._extras import extra
from modelplane.cli._output import EXIT_CHECK_FAILED, EXIT_USAGE, CliError, Printer
from modelplane.units import parse_duration

#: CLI dest -> settings field; options left out fall back to MODELPLANE_INJECTOR_* or defaults.
_FIELDS = (
    ("listen", "listen"),
    ("health_listen", "health_listen"),
    ("serve_tls_cert", "tls_cert"),
    ("serve_tls_key", "tls_key"),
    ("control_plane", "control_plane"),
    ("sidecar_image", "sidecar_image"),
    ("sidecar_gpu_image", "sidecar_gpu_image"),
    ("native_sidecars", "native_sidecars"),
    ("log_level", "log_level"),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``injector`` commands."""
    injector = sub.add_parser("injector", help="the Kubernetes sidecar-injection webhook")
    commands = injector.add_subparsers(dest="injector_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the mutating admission webhook (POST /inject) over HTTPS",
        description=(
            "Add the Modelplane sidecar to pods labelled modelplane.dev/inject=true. Prints "
            'one JSON line on stdout once listening: {"event": "injector ready", "port": ...}. '
            "Every option also reads MODELPLANE_INJECTOR_<OPTION> (--shutdown-delay: "
            "MODELPLANE_INJECTOR_SHUTDOWN_DELAY_SECONDS, in seconds)."
        ),
    )
    add = serve.add_argument
    add("--listen", metavar="HOST:PORT", help="HTTPS address (default 0.0.0.0:8443; port 0 = any)")
    add(
        "--health-listen",
        metavar="HOST:PORT",
        help="plain-HTTP address of GET /healthz and GET /livez alone, for the kubelet's probes "
        "(default 0.0.0.0:8081; port 0 = any)",
    )
    # Distinct dests: the global --tls-cert/--tls-key are the client's.
    add("--tls-cert", dest="serve_tls_cert", metavar="FILE", help="PEM certificate chain")
    add("--tls-key", dest="serve_tls_key", metavar="FILE", help="PEM private key of --tls-cert")
    add(
        "--control-plane",
        metavar="ADDR",
        help="control plane HOST:PORT for pods without the modelplane.dev/control-plane "
        "annotation (default modelplane-controlplane.modelplane.svc:50051)",
    )
    add("--sidecar-image", metavar="IMAGE", help="sidecar image (default modelplane/sidecar:0.1.0)")
    add(
        "--sidecar-gpu-image",
        metavar="IMAGE",
        help="sidecar image for pods asking for GPUs (default modelplane/sidecar-gpu:0.1.0)",
    )
    add(
        "--native-sidecars",
        choices=("on", "off"),
        help="on (default, Kubernetes 1.29+): an init container with restartPolicy Always; "
        "off: a regular container",
    )
    add(
        "--shutdown-delay",
        metavar="DURATION",
        help="on SIGTERM, answer /healthz with 503 but keep answering reviews this long, e.g. "
        "10s, so that the Service's endpoints drop the pod before its port closes; then "
        "reviews in flight get MODELPLANE_INJECTOR_GRACE_SECONDS (default 10) to be answered "
        "(default 5s)",
    )
    add("--log-level", metavar="LEVEL", help="log level (default info)")
    serve.set_defaults(handler=_serve)


def _settings(args: argparse.Namespace) -> Any:
    with extra("controlplane", "the injector"):
        from pydantic import ValidationError

        from controlplane.injector import InjectorSettings
    given = {field: getattr(args, dest) for dest, field in _FIELDS if getattr(args, dest)}
    if args.shutdown_delay:
        try:
            given["shutdown_delay_seconds"] = parse_duration(args.shutdown_delay)
        except ValueError as exc:
            raise CliError(f"--shutdown-delay: {exc}", EXIT_USAGE) from None
    try:
        return InjectorSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(
            f"invalid injector settings: {problems} (--tls-cert and --tls-key are required)",
            EXIT_USAGE,
        ) from None


def _serve(args: argparse.Namespace, printer: Printer) -> int:
    import ssl
    import threading

    settings = _settings(args)
    with extra("controlplane", "the injector"):
        from controlplane.injector import start
        from modelplane.server.lifecycle import hold_stop_signals, on_stop_signals
        from modelplane.server.logging import configure_logging

    configure_logging(settings.log_level)
    hold_stop_signals()  # a SIGTERM while it starts stops it once it has started
    try:
        handle = start(settings)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot serve the injector: {exc}", EXIT_CHECK_FAILED) from None

    def stop(signum: int) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the same signal again ends it at once
        threading.Thread(target=handle.stop, name="injector-shutdown", daemon=True).start()

    on_stop_signals(stop)
    ready = {"event": "injector ready", "address": settings.listen, "port": handle.port}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    # Wake now and then: a signal the kernel hands to another thread sets Python's flag but
    # does not interrupt a wait of the main thread, where the handler has to run.
    while not handle.wait(0.2):
        pass
    return 0
