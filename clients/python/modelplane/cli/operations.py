"""``modelplane operations`` commands."""

from __future__ import annotations

import argparse
import time

from modelplane._client import Client, operation_error
from modelplane.cli._common import client, duration, page_size, server_errors
from modelplane.cli._output import EXIT_NOT_DONE, EXIT_OK, Printer, to_dict
from modelplane.cli._pages import note_next_page, pages
from modelplane.v1 import operations_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``operations`` commands."""
    p = sub.add_parser("operations", help="long-running operations (evaluations and the like)")
    s = p.add_subparsers(dest="operations_command", metavar="ACTION", required=True)
    g = s.add_parser("get", help="show an operation")
    g.add_argument("name", help="operations/ID")
    g.set_defaults(handler=_get)
    ls = s.add_parser("list", help="list operations, newest first")
    ls.add_argument(
        "--target",
        default="",
        help="only those about this resource: on it or under it (models/m1 also lists its "
        "versions' evaluations)",
    )
    ls.add_argument("--page-size", type=page_size, default=0)
    ls.add_argument("--page-token", default="")
    ls.set_defaults(handler=_list)
    w = s.add_parser("wait", help="wait until an operation is done")
    w.add_argument("name")
    w.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=duration(),
        default=60.0,
        metavar="DURATION",
        help="time to wait: seconds (90) or with units (30s, 10m) (default 60); exit 5 if not "
        "done by then, 3 if it failed",
    )
    w.set_defaults(handler=_wait)
    c = s.add_parser(
        "cancel",
        help="cancel an operation (an evaluation stops at once; a finished one is left as it is)",
    )
    c.add_argument("name", help="operations/ID")
    c.set_defaults(handler=_cancel)


#: The longest single WaitOperation call (the server caps each wait at 60 s).
MAX_WAIT_STEP_S = 30.0

COLUMNS = ["name", "kind", "target", "done", "progress", "error", "create_time"]


def row(o: operations_pb2.Operation) -> list[object]:
    """An operation as a row of :data:`COLUMNS`."""
    error = f"{o.error.code} {o.error.reason}" if o.HasField("error") else ""
    return [
        o.name,
        o.kind,
        o.target,
        o.done,
        f"{o.progress:.0%}",
        error,
        o.create_time.ToJsonString(),
    ]


def _get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        o = c.get_operation(args.name)
    out.emit(o, columns=COLUMNS, rows=[row(o)])
    return 0


def _cancel(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        o = c.cancel_operation(args.name)
    out.emit(o, columns=COLUMNS, rows=[row(o)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    """One page with --page-size or --page-token; every page otherwise."""
    with server_errors(), client(args) as c:
        operations, token = pages(
            lambda t: c.list_operations(target=args.target, page_size=args.page_size, page_token=t),
            "operations",
            args.page_size,
            args.page_token,
        )
    out.emit(
        {"operations": [to_dict(o) for o in operations], "next_page_token": token},
        columns=COLUMNS,
        rows=[row(o) for o in operations],
    )
    note_next_page(out, token)
    return 0


def waited(
    c: Client, operation: operations_pb2.Operation | str, seconds: float
) -> operations_pb2.Operation:
    """The operation (or the one named) once done, or as it stands when ``seconds`` have
    passed."""
    deadline = time.monotonic() + seconds
    o = c.get_operation(operation) if isinstance(operation, str) else operation
    while not o.done and (left := deadline - time.monotonic()) > 0:
        # The server caps one wait; wait_operation gives each call a deadline past it.
        o = c.wait_operation(o.name, min(left, MAX_WAIT_STEP_S))
    return o


def _wait(args: argparse.Namespace, out: Printer) -> int:
    """Exit 0 when the operation succeeded, 3 with its error when it failed, 5 (with the
    operation on stdout) when it is still running at ``--timeout``."""
    with server_errors(), client(args) as c:
        o = waited(c, args.name, args.wait_timeout)
        if o.HasField("error"):
            raise operation_error(o.error)
    out.emit(o, columns=COLUMNS, rows=[row(o)])
    if not o.done:
        out.progress(f"{o.name} is still running after {args.wait_timeout:g}s")
        return EXIT_NOT_DONE
    return EXIT_OK
