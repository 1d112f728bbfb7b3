"""Helpers shared by the CLI commands: the client, error mapping, KEY=VALUE parsing."""

from __future__ import annotations

import argparse
import errno
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from modelplane._client import CallDeadlineExceeded, Client, ServerUnreachable, rpc_error
from modelplane.cli._output import (
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
)
from modelplane.errors import ModelplaneError
from modelplane.ids import PRINCIPAL_RULE, is_principal
from modelplane.units import format_duration, parse_duration

#: The largest values of protobuf's int32 and int64 fields (page sizes are int32; versions,
#: revisions and counts int64).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def whole_number(low: int = 0, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, so that a value the
    request's field cannot hold is a usage error naming the option (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: use {low} to {high}")
        return value

    return parse


#: The longest duration an option takes: 10^8 seconds (about 3 years). gRPC adds a call's
#: timeout to the clock in nanoseconds, and past about 9.2 * 10^9 seconds that overflows into
#: a deadline already passed, failing every call at once with DEADLINE_EXCEEDED.
MAX_SECONDS = 1e8


def duration(*, above_zero: bool = False, maximum: float = MAX_SECONDS) -> Callable[[str], float]:
    """An argparse ``type`` for options in seconds: a bare number of seconds or a duration as
    :func:`modelplane.units.parse_duration` reads one (``90``, ``30s``, ``10m``, ``1h30m``),
    from 0 (above 0 with ``above_zero``) to ``maximum``; anything else is a usage error naming
    the option (exit 2)."""

    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text, bare_seconds=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if above_zero and seconds <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: use a duration above 0")
        if seconds > maximum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is more than the longest, {format_duration(maximum)} "
                f"({maximum:.0f} seconds)"
            )
        return seconds

    return parse


def takes_relative_times(parser: argparse.ArgumentParser) -> None:
    """Let ``parser``'s options take a value such as ``-1h`` (a time before now) as a value,
    as argparse takes ``-1``, not as an unknown option."""
    parser._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


#: ``--page-size``: 0 (the server's default) up to int32.
page_size = whole_number(0, INT32_MAX)
#: A version number: 1 up to int64.
version_number = whole_number(1, INT64_MAX)


def version_or_alias(text: str) -> int | str:
    """An argparse ``type``: a version number (as :data:`version_number` takes one), or
    ``@ALIAS`` as given, for :func:`numbered_version` to resolve."""
    if text.startswith("@") and len(text) > 1:
        return text
    try:
        return version_number(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: give a version number or @ALIAS") from None


#: The help of a version argument whose alias the CLI resolves (:func:`numbered_version`).
VERSION_OR_ALIAS_HELP = (
    "version number, or @ALIAS: the version the alias points at when the command runs "
    "(resolved once, and named on stderr)"
)


def numbered_version(c: Client, model: str, version: int | str, out: Printer) -> int | str:
    """``version`` as a command that changes or checks one version sends it: a number as
    given; ``@ALIAS`` resolved once, now, to the version the alias points at, which a note on
    stderr names (the alias may move while the command runs, and after it)."""
    if not str(version).startswith("@"):
        return version
    found = c.get_version(model, version)
    out.progress(f"note: {version} points at {found.name}: using version {found.version}")
    return found.version


#: gRPC target schemes ``--server`` passes through as they are (``unix:/run/mp.sock``).
_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def check_server(
    address: str, option: str = "--server", example: str = "127.0.0.1:50051 (env MODELPLANE_SERVER)"
) -> str:
    """``--server`` (or another ``option`` naming a server, such as ``--sidecar``):
    ``HOST:PORT`` with a port from 1 to 65535 (``[::1]:PORT`` for IPv6), or a gRPC target with
    a scheme (``dns:``, ``unix:``, ...); a usage error (exit 2) otherwise."""
    if address.startswith(_TARGET_SCHEMES):
        return address
    host, sep, port = address.rpartition(":")
    # An IPv6 host is bracketed ([::1]:50051): ::1 alone is a host with no port.
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if (
        sep
        and host
        and not bare_ipv6
        and port.isascii()
        and port.isdigit()
        and 1 <= int(port) <= 65535
    ):
        return address
    raise CliError(f"{option} {address!r}: use HOST:PORT, e.g. {example}", EXIT_USAGE)


def check_sidecar(address: str) -> str:
    """``--sidecar``: an address as :func:`check_server` takes one."""
    return check_server(address, "--sidecar", "127.0.0.1:8001")


#: The global option (and its environment variable) each value the SDK sends as gRPC
#: metadata comes from (``modelplane._client.metadata_value``).
_METADATA_OPTIONS = {
    "principal": "--as (default: env MODELPLANE_PRINCIPAL, else the OS user)",
    "token": "--token (env MODELPLANE_TOKEN)",
    "roles": "--roles (env MODELPLANE_ROLES)",
}


def usage_error(exc: ModelplaneError) -> CliError:
    """A usage error (exit 2) for an SDK error about the options given, naming the option a
    value that cannot be sent as metadata came from."""
    option = _METADATA_OPTIONS.get(exc.metadata.get("field", ""))
    message = (
        f"{option}: {exc.message}" if exc.reason == "INVALID_METADATA" and option else exc.message
    )
    return CliError(message, EXIT_USAGE, reason=exc.reason)


def client(args: argparse.Namespace) -> Client:
    """A client for the global ``--server``, ``--as``, ``--timeout``, ``--token`` and TLS
    options."""
    check_server(args.server)
    name = args.principal or ""
    if name.isascii() and name.isprintable() and name and not is_principal(name):
        # A server without access control would refuse it (one with access control ignores
        # it); what cannot travel as metadata at all is the SDK's to say, below.
        raise CliError(
            f"{_METADATA_OPTIONS['principal']}: {name!r} is not a principal name "
            f"({PRINCIPAL_RULE})",
            EXIT_USAGE,
            reason="INVALID_METADATA",
        )
    try:
        return Client(
            args.server,
            principal=args.principal,
            timeout=args.timeout,
            token=getattr(args, "token", "") or "",
            tls_ca=getattr(args, "tls_ca", "") or None,
            tls_cert=getattr(args, "tls_cert", "") or None,
            tls_key=getattr(args, "tls_key", "") or None,
            tls=bool(getattr(args, "tls", False)),
        )
    except ModelplaneError as exc:
        raise usage_error(exc) from None


def with_roles(c: Client, args: argparse.Namespace) -> Client:
    """``c`` sending the global ``--roles``; a role that cannot be sent is a usage error."""
    try:
        return c.with_roles(getattr(args, "roles", []) or [])
    except ModelplaneError as exc:
        raise usage_error(exc) from None


def add_request_id(parser: argparse.ArgumentParser) -> None:
    """``--request-id`` for a command that changes something on the server."""
    parser.add_argument(
        "--request-id",
        default="",
        metavar="ID",
        help="idempotency key: this command run again with the same ID and arguments answers "
        "what the first run did instead of applying it twice (default: a new one per run)",
    )


def _may_have_landed(exc: ModelplaneError) -> str:
    """For a change whose outcome is unknown (no answer came back), how to learn it without
    applying it twice; empty otherwise."""
    request_id = exc.metadata.get("request_id", "")
    if not request_id:
        return ""
    return (
        f"; the change may have been applied: run the command again with "
        f"--request-id {request_id} to get its answer without applying it twice"
    )


@contextmanager
def server_errors() -> Iterator[None]:
    """Turn SDK errors into the CLI's exit codes: 4 unreachable or no answer before the call's
    deadline (``--timeout``), 3 any error the server sent."""
    try:
        yield
    except ServerUnreachable as exc:
        raise CliError(
            exc.message + _may_have_landed(exc), EXIT_UNREACHABLE, status="UNAVAILABLE"
        ) from None
    except CallDeadlineExceeded as exc:
        raise CliError(
            f"{exc.message}; a longer --timeout gives it more time{_may_have_landed(exc)}",
            EXIT_UNREACHABLE,
            status=exc.code.value,
            reason=exc.reason,
        ) from None
    except ModelplaneError as exc:
        raise CliError(
            exc.message, EXIT_SERVER_ERROR, status=exc.code.value, reason=exc.reason
        ) from None


def key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}``; a usage error otherwise."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r} must look like KEY=VALUE", EXIT_USAGE)
        out[key] = value
    return out


def key_floats(items: list[str] | None, what: str) -> dict[str, float]:
    """KEY=NUMBER pairs."""
    out = {}
    for key, value in key_values(items, what).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise CliError(
                f"{what} {key}={value!r}: the value must be a number", EXIT_USAGE
            ) from None
    return out


def csv_list(text: str | None) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]``."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def call_sidecar(address: str, method: str, request: Any, timeout: float) -> Any:
    """Call ``SidecarAdminService.<method>`` on the sidecar at ``address``; SDK errors as the
    control-plane client raises them (``ServerUnreachable`` when nothing answered); an
    address that is not ``HOST:PORT`` is a usage error (:func:`check_sidecar`)."""
    import grpc

    from modelplane.v1 import sidecar_pb2_grpc

    check_sidecar(address)
    with grpc.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarAdminServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise sidecar_error(exc, address) from None


def sidecar_error(exc: Any, address: str) -> ModelplaneError:
    """The SDK error for a failed call to the sidecar at ``address`` (``exc``, a
    ``grpc.RpcError``), as :func:`modelplane._client.rpc_error` makes it; an address that
    serves no sidecar API is likely the control plane's."""
    return rpc_error(
        exc,
        f"the sidecar at {address}",
        not_served=(
            f"is {address} the control plane's address? --sidecar takes the address a sidecar "
            "serves on (its --listen), not the control plane's; or the sidecar there is older "
            "than this client and lacks the call"
        ),
    )


#: What binding an address in use, not this host's, or a privileged port fails with.
BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def listen_error(exc: OSError, listen: str, *, workers: bool = False) -> CliError | None:
    """The listener a failed bind of a server was for (``serve`` of the control plane and of
    the sidecar), named with its option and address (exit 2); None for another error.

    gRPC's own bind fails with "cannot listen on ADDRESS" (the reason is in gRPC's log line);
    the metrics endpoint's carries its option in the message; with ``--workers N`` the
    supervisor reserves the gRPC port with a plain socket, whose error names no file."""
    grpc_bind = exc.errno is None and str(exc).startswith("cannot listen on")
    if exc.errno in BIND_ERRNOS and not exc.filename and exc.strerror:
        if exc.strerror.startswith("--metrics-listen "):
            return CliError(exc.strerror, EXIT_USAGE)
        grpc_bind = workers
    if not grpc_bind:
        return None
    return CliError(
        f"--listen {listen}: cannot listen on it (the port is in use, or the host is not an "
        "address of this machine)",
        EXIT_USAGE,
    )
