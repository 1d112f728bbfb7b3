"""``modelplane controlplane serve``: run the control-plane server (``backup`` is in
:mod:`modelplane.cli.controlplane_backup`, ``db`` in :mod:`modelplane.cli.controlplane_db`)."""

from __future__ import annotations

import argparse

from modelplane.cli import controlplane_backup, controlplane_db
from modelplane.cli._common import listen_error
from modelplane.cli._extras import extra
from modelplane.cli._output import EXIT_UNREACHABLE, EXIT_USAGE, CliError, Printer
from modelplane.errors import InvalidArgument, ModelplaneError, Unavailable
from modelplane.units import parse_duration, parse_size


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``controlplane`` commands."""
    p = sub.add_parser(
        "controlplane", help="run the control-plane server, back up and migrate its database"
    )
    s = p.add_subparsers(dest="controlplane_command", metavar="ACTION", required=True)
    serve = s.add_parser(
        "serve",
        help="serve the registry over gRPC",
        description="Every option may also come from a MODELPLANE_* environment variable.",
    )
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051; port 0 picks one)")
    serve.add_argument(
        "--db", help="sqlite:///PATH (default .modelplane/controlplane.db) or postgresql://..."
    )
    serve.add_argument(
        "--artifact-root",
        metavar="FOLDER|URI",
        help="where blobs are kept: a folder (default .modelplane/artifacts) or object storage "
        "as s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (then --signing-key is needed)",
    )
    serve.add_argument("--metrics-listen", help="HOST:PORT of the Prometheus endpoint")
    serve.add_argument("--max-upload-size", help="largest upload, e.g. 2GiB")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--max-workers", type=int, help="threads answering calls in each process (default 16)"
    )
    serve.add_argument(
        "--max-watches",
        type=int,
        help="WatchDeployment streams each process serves, on threads of their own (default "
        "256); more are refused and their sidecars retry",
    )
    serve.add_argument(
        "--evaluation-workers", type=int, help="threads running server-side evaluations (default 2)"
    )
    serve.add_argument(
        "--evaluation-timeout",
        help="longest one evaluation may run, e.g. 30m (default 1h); then it fails with "
        "DEADLINE_EXCEEDED",
    )
    serve.add_argument(
        "--shutdown-delay",
        help="on SIGTERM, serve on this long with health NOT_SERVING before the grace period, "
        "e.g. 5s, so that load balancers stop sending first (default 0)",
    )
    serve.add_argument(
        "--workers",
        help="server processes sharing the port: N, or auto for one per usable core (default 1)",
    )
    serve.add_argument(
        "--signing-key",
        metavar="FILE",
        help="Ed25519 key signing approvals and audit checkpoints; a file named here must exist "
        "(make one with: openssl genpkey -algorithm ed25519 -out FILE); default: one generated "
        "under the artifact root, mode 0600",
    )
    serve.add_argument(
        "--verification-keys",
        metavar="DIR",
        help="folder of the public keys (PEM, as `keys show` prints them) of retired signing "
        "keys: approvals and checkpoints they signed stay valid; only --signing-key signs",
    )
    serve.add_argument(
        "--auth",
        help="access control: tokens:FILE (YAML bearer tokens), jwt, or none (off even on a "
        "non-loopback address); default off, serving loopback clients only",
    )
    serve.add_argument("--jwt-issuer", help="with --auth jwt: the required iss claim")
    serve.add_argument("--jwt-audience", help="with --auth jwt: the required aud claim")
    serve.add_argument(
        "--jwt-key",
        metavar="FILE",
        help="with --auth jwt: PEM public key (RS*, PS*, ES*, EdDSA) or a file holding an HMAC "
        "secret (HS256, HS384, HS512)",
    )
    serve.add_argument(
        "--jwt-roles-claim", help="with --auth jwt: the claim holding roles (default roles)"
    )
    serve.add_argument(
        "--jwt-models-claim",
        help="with --auth jwt: the claim listing the models a token's roles are limited to "
        "(default models, dotted for nested); without it a token acts on every model",
    )
    # Distinct dests: the global --tls-cert/--tls-key are the client's.
    serve.add_argument(
        "--tls-cert", dest="serve_tls_cert", metavar="FILE", help="serve TLS with this PEM chain"
    )
    serve.add_argument(
        "--tls-key", dest="serve_tls_key", metavar="FILE", help="PEM private key of --tls-cert"
    )
    serve.add_argument(
        "--client-ca",
        metavar="FILE",
        help="require client certificates signed by this PEM CA bundle (mutual TLS)",
    )
    serve.add_argument(
        "--allow-empty-database",
        action="store_true",
        help="start a new, empty registry although the artifact root holds stored blobs "
        "(refused otherwise: the database is most likely a copy taken with cp while the server "
        "ran, or not the one meant)",
    )
    serve.set_defaults(handler=_serve)
    controlplane_backup.register(s)
    controlplane_db.register(s)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of the ASCII digits 0-9 (``str.isdigit`` also takes
    "²" and other digits ``int`` refuses)."""
    return bool(text) and text.isascii() and text.isdigit()


def _check_address(option: str, address: str) -> None:
    """``HOST:PORT`` with a port from 0 to 65535 (``[::1]:PORT`` for IPv6), or exit 2."""
    _, sep, port = address.rpartition(":")
    if not (sep and _ascii_digits(port) and int(port) <= 65535):
        raise CliError(f"{option} {address!r}: use HOST:PORT (port 0 picks a free one)", EXIT_USAGE)


def _serve(args: argparse.Namespace, out: Printer) -> int:
    # The settings are checked before the server's modules load (about a second): a bad
    # option is reported at once.
    with extra("controlplane", "the control plane"):
        from pydantic import ValidationError

        from controlplane.settings import ControlPlaneSettings
    overrides: dict[str, object] = {}
    for option, field in (
        ("listen", "listen"),
        ("db", "db_url"),
        ("artifact_root", "artifact_root"),
        ("metrics_listen", "metrics_listen"),
        ("log_level", "log_level"),
        ("signing_key", "signing_key"),
        ("verification_keys", "verification_keys"),
        ("auth", "auth"),
        ("jwt_issuer", "jwt_issuer"),
        ("jwt_audience", "jwt_audience"),
        ("jwt_key", "jwt_key"),
        ("jwt_roles_claim", "jwt_roles_claim"),
        ("jwt_models_claim", "jwt_models_claim"),
        ("serve_tls_cert", "tls_cert"),
        ("serve_tls_key", "tls_key"),
        ("client_ca", "client_ca"),
    ):
        if getattr(args, option):
            overrides[field] = getattr(args, option)
    if args.max_upload_size:
        try:
            overrides["max_upload_bytes"] = parse_size(args.max_upload_size)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    if args.allow_empty_database:
        overrides["allow_empty_database"] = True
    for option in ("max_workers", "max_watches", "evaluation_workers"):
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    if args.evaluation_timeout:
        try:
            overrides["evaluation_timeout_seconds"] = parse_duration(args.evaluation_timeout)
        except ValueError as exc:
            raise CliError(f"--evaluation-timeout: {exc}", EXIT_USAGE) from None
    if args.shutdown_delay:
        try:
            overrides["shutdown_delay_seconds"] = parse_duration(args.shutdown_delay)
        except ValueError as exc:
            raise CliError(f"--shutdown-delay: {exc}", EXIT_USAGE) from None
    if args.workers:
        if args.workers != "auto" and not (_ascii_digits(args.workers) and int(args.workers) > 0):
            raise CliError(f"--workers {args.workers!r}: use a positive number or auto", EXIT_USAGE)
        overrides["workers"] = 0 if args.workers == "auto" else int(args.workers)
    try:
        settings = ControlPlaneSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid control plane settings: {problems}", EXIT_USAGE) from None
    with extra("controlplane", "the control plane"):
        from controlplane.store import check_db_url
    try:
        check_db_url(settings.db_url)
    except InvalidArgument as exc:
        raise CliError(f"--db: {exc.message}", EXIT_USAGE, reason=exc.reason) from None
    _check_address("--listen", settings.listen)
    if settings.metrics_listen:
        _check_address("--metrics-listen", settings.metrics_listen)
    if settings.log_level.lower() not in LOG_LEVELS:
        raise CliError(
            f"--log-level {settings.log_level!r}: use one of {', '.join(LOG_LEVELS)}", EXIT_USAGE
        )
    with extra("controlplane", "the control plane"):
        from controlplane.auth import AccessConfigError
        from controlplane.server import start
        from controlplane.workers import supervise
        from modelplane.server import configure_logging
        from modelplane.server.lifecycle import hold_stop_signals
        from modelplane.server.supervisor import worker_count
    configure_logging(settings.log_level)
    count = worker_count(settings.workers)
    try:
        if count > 1:
            return supervise(settings, count)
        hold_stop_signals()  # a SIGTERM while it starts stops it once it has started
        try:
            handle = start(settings)
        except OSError as exc:
            error = listen_error(exc, settings.listen)
            if error is None:
                raise
            raise error from None
    except AccessConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE, reason="INVALID_ACCESS_CONFIG") from None
    except Unavailable as exc:
        raise CliError(exc.message, EXIT_UNREACHABLE, reason=exc.reason) from None
    except ModelplaneError as exc:
        raise CliError(exc.message, EXIT_USAGE, reason=exc.reason) from None
    handle.stop_on_signals()
    handle.wait()
    return 0
