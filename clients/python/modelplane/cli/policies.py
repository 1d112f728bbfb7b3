"""``modelplane policies`` commands: CEL rules bound to a promotion target."""

from __future__ import annotations

import argparse

from modelplane.cli._common import add_request_id, client, server_errors, whole_number
from modelplane.cli._output import EXIT_USAGE, CliError, Printer, to_dict
from modelplane.v1 import governance_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``policies`` commands."""
    p = sub.add_parser("policies", help="gate policies (CEL rules bound to a target)")
    s = p.add_subparsers(dest="policies_command", metavar="ACTION", required=True)

    c = s.add_parser("create", help="create a policy")
    c.add_argument("name", help="policy id")
    c.add_argument(
        "--target", required=True, help="an alias name (e.g. production) or deployments/NAME"
    )
    c.add_argument(
        "--rule", action="append", required=True, metavar="EXPR", help="a CEL rule (repeatable)"
    )
    c.add_argument("--description", default="")
    add_request_id(c)
    c.set_defaults(handler=_create)

    g = s.add_parser("get", help="show a policy")
    g.add_argument("name")
    g.add_argument("--revision", type=whole_number(), default=0, help="a past revision")
    g.set_defaults(handler=_get)

    ls = s.add_parser("list", help="list policies")
    ls.set_defaults(handler=_list)

    u = s.add_parser("update", help="replace a policy's rules, description or target")
    u.add_argument("name")
    u.add_argument("--rule", action="append", metavar="EXPR", help="replaces all rules")
    u.add_argument("--description")
    u.add_argument("--target")
    u.add_argument("--etag", default="")
    add_request_id(u)
    u.set_defaults(handler=_update)

    d = s.add_parser("delete", help="delete a policy")
    d.add_argument("name")
    d.add_argument("--etag", default="")
    add_request_id(d)
    d.set_defaults(handler=_delete)


COLUMNS = ["name", "target", "revision", "rules", "updated_by", "update_time"]


def _row(p: governance_pb2.Policy) -> list[object]:
    return [
        p.name,
        p.target,
        p.revision,
        " && ".join(f"({r})" for r in p.rules),
        p.updated_by,
        p.update_time.ToJsonString(),
    ]


def _create(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        p = c.create_policy(
            args.name,
            target=args.target,
            rules=args.rule,
            description=args.description,
            request_id=args.request_id or None,
        )
    out.emit(p, columns=COLUMNS, rows=[_row(p)])
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        p = c.get_policy(args.name, revision=args.revision)
    out.emit(p, columns=COLUMNS, rows=[_row(p)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        items = list(c.list_policies())
    out.emit(
        {"policies": [to_dict(p) for p in items]}, columns=COLUMNS, rows=[_row(p) for p in items]
    )
    return 0


def _update(args: argparse.Namespace, out: Printer) -> int:
    if args.rule is None and args.description is None and args.target is None:
        raise CliError("name something to change: --rule, --description or --target", EXIT_USAGE)
    with server_errors(), client(args) as c:
        p = c.update_policy(
            args.name,
            etag=args.etag,
            rules=args.rule,
            description=args.description,
            target=args.target,
            request_id=args.request_id or None,
        )
    out.emit(p, columns=COLUMNS, rows=[_row(p)])
    return 0


def _delete(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        c.delete_policy(args.name, etag=args.etag, request_id=args.request_id or None)
    out.emit({"deleted": f"policies/{args.name.removeprefix('policies/')}"})
    return 0
