"""`modelplane sidecar` commands: ``serve`` runs the inference sidecar.

The server's modules (ONNX Runtime, numpy) load only when ``serve`` runs, so the light CLI
stays light.
"""

from __future__ import annotations

import argparse
from typing import Any

from modelplane.cli._common import listen_error
from modelplane.cli._extras import extra
from modelplane.cli._output import EXIT_CHECK_FAILED, EXIT_USAGE, CliError, Printer

#: CLI flag -> settings field; flags left out fall back to MODELPLANE_SIDECAR_* or defaults.
_FIELDS = (
    "model",
    "listen",
    "model_name",
    "model_version",
    "metrics_listen",
    "device",
    "max_batch_size",
    "max_queue_delay",
    "max_queue_rows",
    "max_request_rows",
    "max_bytes_elements",
    "reject_non_finite",
    "intra_op_threads",
    "intra_op_spinning",
    "workers",
    "cuda_mps",
    "observer_mode",
    "handler_threads",
    "drain_seconds",
    "shutdown_delay",
    "log_level",
    "feature_names",
    "baseline",
    "baseline_label",
    "drift_window_rows",
    "drift_window",
    "drift_psi",
    "drift_ks_pvalue",
    "drift_chi2_pvalue",
    "drift_js",
    "drift_min_rows",
    "control_plane",
    "deployment",
    "cache_dir",
    "replica",
    "control_plane_token",
    "control_plane_tls_ca",
    "control_plane_tls_cert",
    "control_plane_tls_key",
    "label_index_rows",
    "shadow_queue",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `sidecar` commands."""
    sidecar = sub.add_parser("sidecar", help="the inference sidecar")
    commands = sidecar.add_subparsers(dest="sidecar_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve an ONNX model over the Open Inference Protocol (KServe v2 gRPC)",
        description=(
            "Serve one ONNX model over the Open Inference Protocol (--model), or the versions a "
            "deployment's desired state names (--control-plane ADDR --deployment NAME). Prints "
            'one JSON line on stdout once ready: {"event": "sidecar ready", "address": ..., '
            '"port": ...}. Every option also reads MODELPLANE_SIDECAR_<OPTION>, except the '
            "--log-* options, which read MODELPLANE_LOG_<OPTION> (MODELPLANE_LOG_DIR for "
            "--log-dir)."
        ),
    )
    add = serve.add_argument
    add("--model", metavar="FILE.onnx", help="ONNX model file to serve (standalone mode)")
    add(
        "--listen",
        metavar="HOST:PORT",
        help="gRPC address (default 0.0.0.0:8001, managed mode 0.0.0.0:0; port 0 = any)",
    )
    add("--model-name", metavar="NAME", help="model name clients use (default: file stem)")
    add("--model-version", metavar="V", help="version served and accepted (default 1)")
    add("--metrics-listen", metavar="HOST:PORT", help="Prometheus endpoint (default: none)")
    add("--device", choices=("auto", "cpu", "cuda"), help="execution device (default auto)")
    add(
        "--max-batch-size",
        type=int,
        metavar="ROWS",
        help="rows per session call (1 = off; default: 32 when warm-up shows batching pays, "
        "else off)",
    )
    add("--max-queue-delay", metavar="DURATION", help="wait for more rows, e.g. 500us, 2ms")
    add("--max-queue-rows", type=int, metavar="ROWS", help="queued rows before shedding")
    add("--max-request-rows", type=int, metavar="ROWS", help="most rows per request")
    add(
        "--max-bytes-elements",
        type=int,
        metavar="N",
        help="most BYTES (string) elements per request, over all inputs (1048576)",
    )
    add(
        "--reject-non-finite",
        action="store_const",
        const=True,
        help="refuse NaN/Inf in floating-point inputs",
    )
    add(
        "--intra-op-threads",
        type=int,
        metavar="N",
        help="ONNX Runtime threads (0 = chosen by warm-up: 1, or a pool for heavy models)",
    )
    add(
        "--intra-op-spinning",
        action="store_const",
        const=True,
        help="let idle ONNX Runtime threads spin for work (default off: spinning takes CPU "
        "from the transport)",
    )
    add("--workers", metavar="N|auto", help="server processes sharing the port (default 1)")
    add(
        "--cuda-mps",
        choices=("auto", "on", "off"),
        help="CUDA MPS for --workers N on a GPU (default auto: when the driver's tools exist)",
    )
    add(
        "--observer-mode",
        choices=("process", "thread"),
        help="where the async prediction log and drift monitoring run (default process: a "
        "child process, off the serving process's GIL)",
    )
    add("--handler-threads", type=int, metavar="N", help="gRPC request threads (0 = auto)")
    add("--drain-seconds", metavar="DURATION", help="SIGTERM drain time (default 30s)")
    add(
        "--shutdown-delay",
        metavar="DURATION",
        help="on SIGTERM, serve on this long with health NOT_SERVING before draining, so that "
        "load balancers stop sending first (default 0; e.g. 5s in Kubernetes)",
    )
    add("--log-level", metavar="LEVEL", help="log level (default info)")
    add(
        "--feature-names",
        metavar="A,B,...",
        help="names of the model's [-1, F] input columns (default: the baseline's, else x_0..)",
    )
    _add_log_arguments(serve)
    _add_managed_arguments(serve)
    drift = serve.add_argument_group("drift monitoring")
    drift.add_argument(
        "--baseline",
        metavar="FILE",
        help="training data (Parquet, Arrow, CSV) or a profile file; turns drift monitoring on",
    )
    drift.add_argument("--baseline-label", metavar="COLUMN", help="dataset column to leave out")
    drift.add_argument(
        "--drift-window-rows", type=int, metavar="N", help="rows per window (default 10000)"
    )
    drift.add_argument("--drift-window", metavar="DURATION", help="time per window, e.g. 5m")
    drift.add_argument("--drift-psi", metavar="X|off", help="PSI threshold (default 0.2)")
    drift.add_argument(
        "--drift-ks-pvalue", metavar="P|off", help="KS p-value threshold (default 0.05)"
    )
    drift.add_argument(
        "--drift-chi2-pvalue", metavar="P|off", help="chi-square p-value threshold (default 0.05)"
    )
    drift.add_argument("--drift-js", metavar="X|off", help="Jensen-Shannon threshold (default off)")
    drift.add_argument(
        "--drift-min-rows",
        type=int,
        metavar="N",
        help="rows a window needs before PSI or Jensen-Shannon flag a feature (default 100)",
    )
    serve.set_defaults(handler=_serve)


def _add_managed_arguments(parser: argparse.ArgumentParser) -> None:
    managed = parser.add_argument_group("managed mode (the control plane decides what serves)")
    add = managed.add_argument
    add("--control-plane", metavar="HOST:PORT", help="control plane to follow (managed mode)")
    add("--deployment", metavar="NAME", help="deployment to serve, NAME or deployments/NAME")
    add(
        "--cache-dir",
        metavar="DIR",
        help="verified artifacts (default <log dir>/cache, else a temporary folder)",
    )
    add("--replica", metavar="NAME", help="replica name in reports (default host-pid-random)")
    add("--control-plane-token", metavar="TOKEN", help="bearer token for the control plane")
    add("--control-plane-tls-ca", metavar="FILE", help="CA file: reach the control plane by TLS")
    add(
        "--control-plane-tls-cert",
        metavar="FILE",
        help="client certificate for a control plane that requires mutual TLS (with the key)",
    )
    add("--control-plane-tls-key", metavar="FILE", help="the client certificate's private key")
    add(
        "--label-index-rows",
        type=int,
        metavar="N",
        help="recent prediction rows kept to join labels with (default 100000)",
    )
    add("--shadow-queue", type=int, metavar="N", help="shadow copies queued before dropping (256)")


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    # The same flags as sidecar.predlog's add_arguments, declared here so that the CLI does
    # not import pyarrow; PredictionLogSettings parses and checks the values.
    log = parser.add_argument_group("prediction log")
    add = log.add_argument
    add("--log-dir", metavar="DIR", help="directory of the Arrow prediction log (default: off)")
    add(
        "--log-durability",
        choices=("async", "sync"),
        help="async (default): written every flush interval; sync: answered once fsynced",
    )
    add("--log-flush-interval", metavar="DURATION", help="async: write at least this often (1s)")
    add(
        "--log-rotate-size",
        metavar="SIZE",
        help="new file once one passes this many bytes (64MiB; checked after each write round, "
        "so a file may pass it by one round)",
    )
    add("--log-rotate-age", metavar="DURATION", help="new file after this long (1h)")
    add("--log-retention", metavar="DURATION", help="delete older files (7d; none keeps them)")
    add("--log-sample-rate", metavar="FRACTION", help="share of requests logged (1)")
    add("--log-exclude-features", metavar="A,B", help="feature columns or inputs never logged")


def _settings(args: argparse.Namespace) -> Any:
    with extra("sidecar", "the sidecar"):
        from pydantic import ValidationError

        from sidecar.settings import SidecarSettings

    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    try:
        return SidecarSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid sidecar settings: {problems}", EXIT_USAGE) from None


def _log_settings(args: argparse.Namespace) -> Any:
    with extra("sidecar", "the sidecar"):
        from pydantic import ValidationError

        from sidecar.predlog.settings import PredictionLogSettings

    try:
        return PredictionLogSettings.from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'log'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid prediction log settings: {problems}", EXIT_USAGE) from None


def _serve(args: argparse.Namespace, printer: Printer) -> int:
    from modelplane.errors import InvalidArgument, ModelplaneError

    settings = _settings(args)
    if settings.model is not None and not settings.model.is_file():
        raise CliError(f"--model {settings.model}: no such file", EXIT_USAGE)
    log_settings = _log_settings(args)
    with extra("sidecar", "the sidecar"):
        from modelplane.server.lifecycle import check_metrics_listen
        from modelplane.server.logging import configure_logging
        from sidecar.cuda import gpu_present
        from sidecar.managed.server import control_plane_tls_files
        from sidecar.server import serve_one
        from sidecar.workers import supervise
    if settings.control_plane is not None:
        try:  # before any worker starts, which would fail on them one by one
            control_plane_tls_files(settings)
        except ModelplaneError as exc:
            raise CliError(
                f"invalid sidecar settings: {exc.message}", EXIT_USAGE, reason=exc.reason
            ) from None
    configure_logging(settings.log_level)

    count = 1
    try:
        count = settings.worker_count(gpu_present())
        if count > 1:
            if settings.metrics_listen:
                check_metrics_listen(settings.metrics_listen)
            return supervise(settings, count, log_settings)
        return serve_one(settings, log_settings)
    except ModelplaneError as exc:
        # An argument the model or its files refuse (an excluded feature it lacks, a baseline
        # file that cannot be read) is a usage error, as a bad setting is; what the model,
        # the baseline's contents or the machine do not allow (no GPU) is a failed check.
        code = EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_CHECK_FAILED
        raise CliError(exc.message, code, reason=exc.reason) from None
    except OSError as exc:
        error = listen_error(exc, settings.listen, workers=count > 1)
        if error is not None:
            raise error from None
        raise CliError(f"cannot serve: {exc}", EXIT_CHECK_FAILED) from None
