"""``modelplane alias`` commands."""

from __future__ import annotations

import argparse

from modelplane._client import model_name
from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    numbered_version,
    server_errors,
    takes_relative_times,
)
from modelplane.cli._output import EXIT_USAGE, CliError, Printer, to_dict
from modelplane.units import parse_time
from modelplane.v1 import registry_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``alias`` commands."""
    p = sub.add_parser("alias", help="point named aliases (champion, production, ...) at versions")
    s = p.add_subparsers(dest="alias_command", metavar="ACTION", required=True)

    st = s.add_parser("set", help="point an alias at a version")
    st.add_argument("name", help="model id")
    st.add_argument("alias")
    st.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    st.add_argument("--reason", default="", help="why (kept in the history)")
    st.add_argument("--etag", default="", help="only if the alias has not moved since read")
    add_request_id(st)
    st.set_defaults(handler=_set)

    g = s.add_parser("get", help="where an alias points (now, or --as-of a past time)")
    g.add_argument("name")
    g.add_argument("alias")
    g.add_argument(
        "--as-of",
        metavar="TIME",
        help="ISO-8601 (2026-01-31T12:00:00Z; no zone is UTC) or relative to now (-1h, -7d)",
    )
    g.set_defaults(handler=_get)
    takes_relative_times(g)  # --as-of -1d

    ls = s.add_parser("list", help="a model's aliases")
    ls.add_argument("name")
    ls.set_defaults(handler=_list)

    d = s.add_parser("delete", help="remove an alias (its history stays)")
    d.add_argument("name")
    d.add_argument("alias")
    d.add_argument("--reason", default="")
    d.add_argument("--etag", default="", help="only if the alias has not moved since read")
    add_request_id(d)
    d.set_defaults(handler=_delete)

    h = s.add_parser("history", help="every move of an alias (or of all the model's aliases)")
    h.add_argument("name")
    h.add_argument("alias", nargs="?")
    h.set_defaults(handler=_history)


COLUMNS = ["alias", "version", "updated_by", "reason", "update_time"]


def _row(a: registry_pb2.Alias) -> list[object]:
    return [a.name, a.version, a.updated_by, a.reason, a.update_time.ToJsonString()]


def _set(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        a = c.set_alias(
            args.name,
            args.alias,
            numbered_version(c, args.name, args.version, out),
            reason=args.reason,
            etag=args.etag,
            request_id=args.request_id or None,
        )
    out.emit(a, columns=COLUMNS, rows=[_row(a)])
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    as_of = None
    if args.as_of:
        try:  # no zone means UTC, as the SDK's get_alias takes a naive datetime
            as_of = parse_time(args.as_of)
        except ValueError as exc:
            raise CliError(f"--as-of: {exc}", EXIT_USAGE) from None
    with server_errors(), client(args) as c:
        a = c.get_alias(args.name, args.alias, as_of=as_of)
    out.emit(a, columns=COLUMNS, rows=[_row(a)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        aliases = c.list_aliases(args.name)
    out.emit(
        {"aliases": [to_dict(a) for a in aliases]}, columns=COLUMNS, rows=[_row(a) for a in aliases]
    )
    return 0


def _delete(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        c.delete_alias(
            args.name,
            args.alias,
            reason=args.reason,
            etag=args.etag,
            request_id=args.request_id or None,
        )
    out.emit({"deleted": f"{model_name(args.name)}/aliases/{args.alias}"})
    return 0


def _history(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        events = list(c.alias_history(args.name, args.alias))
    out.emit(
        {"events": [to_dict(e) for e in events]},
        columns=["time", "alias", "version", "previous_version", "actor", "reason"],
        rows=[
            [
                e.time.ToJsonString(),
                e.alias,
                e.version or "(deleted)",
                e.previous_version,
                e.actor,
                e.reason,
            ]
            for e in events
        ],
    )
    return 0
