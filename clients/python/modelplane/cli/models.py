"""``modelplane models`` commands."""

from __future__ import annotations

import argparse
from typing import Any

from modelplane.cli._checks import add_label_replacement, replaced_labels, unique_key_values
from modelplane.cli._common import add_request_id, client, page_size, server_errors
from modelplane.cli._output import EXIT_USAGE, CliError, Printer, to_dict
from modelplane.cli._pages import note_next_page
from modelplane.v1 import registry_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` commands."""
    p = sub.add_parser("models", help="create, read, update and delete models")
    s = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    c = s.add_parser("create", help="create a model")
    c.add_argument("name", help="model id, e.g. fraud-detector")
    c.add_argument("--description", default="")
    c.add_argument("--label", action="append", metavar="KEY=VALUE", help="a label (repeatable)")
    c.add_argument("--intended-use", default="", help="what the model is for (model cards)")
    c.add_argument("--limitations", default="", help="known limitations (model cards)")
    add_request_id(c)
    c.set_defaults(handler=_create)

    g = s.add_parser("get", help="show a model")
    g.add_argument("name")
    g.set_defaults(handler=_get)

    ls = s.add_parser("list", help="list models")
    ls.add_argument("--filter", default="", help="e.g. 'labels.team=risk'")
    ls.add_argument("--order-by", default="", help="name, create_time or update_time [desc]")
    ls.add_argument("--page-size", type=page_size, default=0, help="one page of this size")
    ls.add_argument("--page-token", default="", help="continue from a previous page")
    ls.set_defaults(handler=_list)

    u = s.add_parser(
        "update", help="update a model's description, labels, intended use, limitations"
    )
    u.add_argument("name")
    u.add_argument("--description")
    add_label_replacement(u, "--label")
    u.add_argument("--intended-use")
    u.add_argument("--limitations")
    u.add_argument("--etag", default="", help="fail with ABORTED unless the model still has it")
    add_request_id(u)
    u.set_defaults(handler=_update)

    d = s.add_parser("delete", help="delete a model")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="also delete its versions and aliases")
    d.add_argument("--etag", default="")
    add_request_id(d)
    d.set_defaults(handler=_delete)


def _row(m: registry_pb2.Model) -> list[object]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))
    return [m.name, m.latest_version, labels, m.description, m.update_time.ToJsonString()]


COLUMNS = ["name", "latest_version", "labels", "description", "update_time"]


def _create(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        m = c.create_model(
            args.name,
            description=args.description,
            labels=unique_key_values(args.label, "--label"),
            intended_use=args.intended_use,
            limitations=args.limitations,
            request_id=args.request_id or None,
        )
    out.emit(m, columns=COLUMNS, rows=[_row(m)])
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        m = c.get_model(args.name)
    out.emit(m, columns=COLUMNS, rows=[_row(m)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        if args.page_size or args.page_token:
            page = c.list_models_page(
                filter=args.filter,
                order_by=args.order_by,
                page_size=args.page_size,
                page_token=args.page_token,
            )
            models, token = list(page.models), page.next_page_token
        else:
            models, token = list(c.list_models(filter=args.filter, order_by=args.order_by)), ""
    out.emit(
        {"models": [to_dict(m) for m in models], "next_page_token": token},
        columns=COLUMNS,
        rows=[_row(m) for m in models],
    )
    note_next_page(out, token)
    return 0


def _update(args: argparse.Namespace, out: Printer) -> int:
    fields: dict[str, Any] = {}
    for key in ("description", "intended_use", "limitations"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    labels = replaced_labels(args.label, args.clear_labels, "--label")
    if labels is not None:
        fields["labels"] = labels
    if not fields:
        raise CliError(
            "name something to change: --description, --label, --clear-labels, "
            "--intended-use or --limitations",
            EXIT_USAGE,
        )
    with server_errors(), client(args) as c:
        m = c.update_model(args.name, etag=args.etag, request_id=args.request_id or None, **fields)
    out.emit(m, columns=COLUMNS, rows=[_row(m)])
    return 0


def _delete(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        c.delete_model(
            args.name, etag=args.etag, force=args.force, request_id=args.request_id or None
        )
    out.emit({"deleted": f"models/{args.name.removeprefix('models/')}"})
    return 0
