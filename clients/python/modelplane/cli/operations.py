"""``modelplane operations`` commands."""

from __future__ import annotations

import argparse

from modelplane.cli._common import client, server_errors
from modelplane.cli._output import Printer, to_dict
from modelplane.v1 import operations_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``operations`` commands."""
    p = sub.add_parser("operations", help="long-running operations (evaluations and the like)")
    s = p.add_subparsers(dest="operations_command", metavar="ACTION", required=True)
    g = s.add_parser("get", help="show an operation")
    g.add_argument("name", help="operations/ID")
    g.set_defaults(handler=_get)
    ls = s.add_parser("list", help="list operations, newest first")
    ls.add_argument("--target", default="", help="only those about this resource")
    ls.add_argument("--page-size", type=int, default=0)
    ls.add_argument("--page-token", default="")
    ls.set_defaults(handler=_list)
    w = s.add_parser("wait", help="wait until an operation is done")
    w.add_argument("name")
    w.add_argument("--timeout", dest="wait_timeout", type=float, default=60.0, help="seconds")
    w.set_defaults(handler=_wait)


COLUMNS = ["name", "kind", "target", "done", "progress", "error", "create_time"]


def _row(o: operations_pb2.Operation) -> list[object]:
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
    out.emit(o, columns=COLUMNS, rows=[_row(o)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        page = c.list_operations(
            target=args.target, page_size=args.page_size, page_token=args.page_token
        )
    out.emit(
        {
            "operations": [to_dict(o) for o in page.operations],
            "next_page_token": page.next_page_token,
        },
        columns=COLUMNS,
        rows=[_row(o) for o in page.operations],
    )
    return 0


def _wait(args: argparse.Namespace, out: Printer) -> int:
    from google.protobuf import duration_pb2

    with server_errors(), client(args) as c:
        request = operations_pb2.WaitOperationRequest(
            name=args.name, timeout=duration_pb2.Duration(seconds=int(args.wait_timeout))
        )
        c.timeout = max(c.timeout, args.wait_timeout + 5)
        o = c._call(c.operations.WaitOperation, request)
    out.emit(o, columns=COLUMNS, rows=[_row(o)])
    return 0
