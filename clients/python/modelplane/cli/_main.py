"""The command line's parser and dispatcher: global options, the subcommands' modules, and the
mapping of what a command raises to the exit codes (see :mod:`modelplane.cli`)."""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from modelplane._client import check_roles
from modelplane.cli import EXIT_INTERRUPTED
from modelplane.cli._checks import has_surrogates, printable
from modelplane.cli._common import MAX_SECONDS, duration
from modelplane.cli._output import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
)
from modelplane.errors import InvalidArgument
from modelplane.ids import is_principal

# Each module registers its subcommands with ``register(subparsers)``.
_COMMAND_MODULES = (
    "models",
    "versions",
    "alias",
    "operations",
    "blobs",
    "controlplane",
    "sidecar",
    "logs",
    "drift",
    "evaluate",
    "evaluations",
    "policies",
    "gate",
    "approve",
    "audit",
    "model_card",
    "keys",
    "injector",
    "deployments",
    "rollout",
    "labels",
)


def _default_principal() -> str:
    """The OS user, when it is a principal name (``john doe`` is not), else ``anonymous``."""
    try:
        user = getpass.getuser()
    except Exception:
        return "anonymous"
    return user if is_principal(user) else "anonymous"


#: The longest ``--timeout`` (see :data:`modelplane.cli._common.MAX_SECONDS`).
MAX_TIMEOUT_SECONDS = MAX_SECONDS


class CommandDefault(float):
    """The global ``--timeout`` when it is not given: "the command's default", 60 seconds for
    every call but those of a command that gives its own (``audit verify``: 1 h). A
    ``--timeout`` given is a plain float, 60 included, and always honoured."""


#: The global ``--timeout``'s default.
DEFAULT_TIMEOUT = CommandDefault(60.0)


def _not_utf8(exc: UnicodeEncodeError, argv: Sequence[str]) -> CliError | None:
    """The usage error for text that held bytes that are not UTF-8 (the OS hands them over as
    surrogates, which protobuf strings cannot carry), naming the arguments that held them;
    None when ``exc`` is about something else."""
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
    if not bad or not all("\udc80" <= ch <= "\udcff" for ch in bad):
        return None
    named = [printable(a) for a in argv if has_surrogates(a)]
    what = ", ".join(f"'{a}'" for a in named or [printable(exc.object)])
    return CliError(
        f"{what}: not UTF-8 text (bytes shown as \\xNN); the server takes names, labels and "
        "other text as UTF-8",
        EXIT_USAGE,
    )


def _roles(text: str) -> list[str]:
    """``--roles`` (or env MODELPLANE_ROLES): role names, stripped and lower-cased. A name
    that is not a role name, or too many, is a usage error before any call (a server without
    access control would refuse them; one with access control ignores roles claimed);
    what cannot travel as metadata at all is the SDK's to say, naming the option."""
    names = [r.strip() for r in text.split(",") if r.strip()]
    if not all(n.isascii() and n.isprintable() for n in names):
        return names
    try:
        return list(check_roles(names))
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(
            f"{exc.message} (--roles, default env MODELPLANE_ROLES)"
        ) from None


_NO_VALUE = re.compile(r"^argument (-\S+): expected one argument$")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, saying how to pass a value that starts with '-' (``--steps -5,50``
    reads ``-5,50`` as an option, so ``--steps`` is told it got no value)."""

    def error(self, message: str) -> NoReturn:
        missing = _NO_VALUE.match(message)
        if missing:
            option = missing.group(1).split("/")[-1]  # -o/--output: the long name
            message += f" (a value that starts with '-' is written {option}=VALUE)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="modelplane",
        description="Model registry, governance, rollouts and the inference sidecar.",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("MODELPLANE_SERVER") or "127.0.0.1:50051",
        help="control plane HOST:PORT (env MODELPLANE_SERVER, unless empty; default "
        "127.0.0.1:50051)",
    )
    parser.add_argument(
        "--output", choices=("table", "json"), default="table", help="output format (default table)"
    )
    parser.add_argument(
        "--as",
        dest="principal",
        default=os.environ.get("MODELPLANE_PRINCIPAL") or _default_principal(),
        help="principal name sent to a server without access control (default: the OS user); "
        "a server with access control takes the principal from --token",
    )
    parser.add_argument(
        "--timeout",
        type=duration(above_zero=True, maximum=MAX_TIMEOUT_SECONDS),
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="time to wait for each call: seconds (90) or with units (30s, 10m, 1h30m), above 0 "
        "and at most 100000000 seconds (default 60, or the command's own: 1h for audit verify)",
    )
    parser.add_argument(
        "--roles",
        type=_roles,
        default=os.environ.get("MODELPLANE_ROLES", ""),
        metavar="ROLE,...",
        help="roles claimed for approvals (env MODELPLANE_ROLES) from a server without access "
        "control, which believes them; a server with access control takes roles from --token",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MODELPLANE_TOKEN", ""),
        help="bearer token (or JWT) for a server with access control (env MODELPLANE_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("MODELPLANE_TLS_CA", ""),
        metavar="FILE",
        help="connect with TLS, trusting this PEM CA bundle (env MODELPLANE_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("MODELPLANE_TLS_CERT", ""),
        metavar="FILE",
        help="client certificate (PEM) for mutual TLS (env MODELPLANE_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=os.environ.get("MODELPLANE_TLS_KEY", ""),
        metavar="FILE",
        help="private key (PEM) of --tls-cert (env MODELPLANE_TLS_KEY)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system's CA certificates",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"modelplane.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    printer = Printer(json_output=args.output == "json")
    try:
        code = args.handler(args, printer)
    except CliError as exc:
        printer.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except ConnectionError as exc:  # pragma: no cover - mapped by the client already
        printer.error(CliError(str(exc), EXIT_UNREACHABLE))
        return EXIT_UNREACHABLE
    except OSError as exc:
        # A local file that cannot be read or written (--out in a missing folder, a
        # directory, no permission): the user's to fix, not a failed check.
        where = f"{exc.filename}: " if exc.filename else ""
        printer.error(CliError(f"{where}{exc.strerror or exc}"))
        return EXIT_USAGE
    except Exception as exc:
        error = _not_utf8(exc, argv) if isinstance(exc, UnicodeEncodeError) else None
        if error is None:
            # A bug, not a failed check: one line naming it, and an exit code of its own.
            detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            error = CliError(f"internal error in the CLI ({args.command}): {detail}", EXIT_INTERNAL)
        printer.error(error)
        return error.exit_code
    return EXIT_OK if code is None else int(code)
