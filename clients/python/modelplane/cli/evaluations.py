"""``modelplane evaluations`` commands: a version's evaluations, listed or one shown, after
``modelplane evaluate`` has run them."""

from __future__ import annotations

import argparse

from modelplane._client import version_name
from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    client,
    numbered_version,
    page_size,
    server_errors,
    version_or_alias,
)
from modelplane.cli._output import EXIT_USAGE, CliError, Printer, to_dict
from modelplane.cli._pages import note_next_page, pages
from modelplane.cli.evaluate import show
from modelplane.v1 import evaluation_pb2

_GET_USAGE = "modelplane evaluations get [-h] (NAME | MODEL VERSION ID)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluations`` commands."""
    p = sub.add_parser("evaluations", help="list and show a version's evaluations")
    s = p.add_subparsers(dest="evaluations_command", metavar="ACTION", required=True)

    ls = s.add_parser("list", help="list a version's evaluations, newest first")
    ls.add_argument("name", metavar="MODEL", help="model id")
    ls.add_argument("version", metavar="VERSION", type=version_or_alias, help=VERSION_OR_ALIAS_HELP)
    ls.add_argument("--page-size", type=page_size, default=0, help="one page of this size")
    ls.add_argument("--page-token", default="", help="continue from a previous page")
    ls.set_defaults(handler=_list)

    g = s.add_parser(
        "get",
        help="show an evaluation as evaluate --wait does",
        usage=_GET_USAGE,
        description="Show one evaluation: by its full name "
        "(models/MODEL/versions/VERSION/evaluations/ID, as evaluations list prints it), or by "
        "its model, version and ID (ev-...).",
    )
    g.add_argument(
        "ref",
        metavar="NAME | MODEL",
        help="the evaluation's full name, or its model id when VERSION and ID follow",
    )
    g.add_argument(
        "version", nargs="?", metavar="VERSION", type=version_or_alias, help=VERSION_OR_ALIAS_HELP
    )
    g.add_argument("eval_id", nargs="?", metavar="ID", help="the evaluation's id, e.g. ev-3f2a...")
    g.set_defaults(handler=_get)


COLUMNS = ["name", "dataset", "task", "rows", "metrics", "create_time"]

#: The metrics the list shows, by task, when the evaluation has them (all are in the JSON).
HEADLINE_METRICS = {
    "classification": ("roc_auc", "accuracy", "f1"),
    "regression": ("rmse", "mae", "r2"),
}


def row(ev: evaluation_pb2.Evaluation) -> list[object]:
    """An evaluation as a row of :data:`COLUMNS`: the dataset as its role and the start of its
    sha256, and the task's headline metrics that are defined."""
    metrics = " ".join(
        f"{name}={ev.metrics[name]:.4g}"
        for name in HEADLINE_METRICS.get(ev.task, ())
        if name in ev.metrics
    )
    return [
        ev.name,
        f"{ev.dataset_role} {ev.dataset_sha256[:16]}",
        ev.task,
        ev.rows,
        metrics,
        ev.create_time.ToJsonString(),
    ]


def _list(args: argparse.Namespace, out: Printer) -> int:
    """One page with --page-size or --page-token; every page otherwise."""
    with server_errors(), client(args) as c:
        version = numbered_version(c, args.name, args.version, out)
        evaluations, token = pages(
            lambda t: c.list_evaluations_page(
                args.name, version, page_size=args.page_size, page_token=t
            ),
            "evaluations",
            args.page_size,
            args.page_token,
        )
    out.emit(
        {"evaluations": [to_dict(e) for e in evaluations], "next_page_token": token},
        columns=COLUMNS,
        rows=[row(e) for e in evaluations],
    )
    note_next_page(out, token)
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    if args.version is None:
        if not args.ref.startswith("models/"):
            raise CliError(
                f"{args.ref!r} is not an evaluation's full name: give "
                "models/MODEL/versions/VERSION/evaluations/ID (as evaluations list prints it), "
                "or the model, version and id: modelplane evaluations get MODEL VERSION ID",
                EXIT_USAGE,
            )
    elif args.eval_id is None:
        raise CliError(
            f"give the evaluation's ID after MODEL and VERSION: usage: {_GET_USAGE}", EXIT_USAGE
        )
    elif not args.eval_id or "/" in args.eval_id:
        raise CliError(
            f"ID {args.eval_id!r}: give the evaluation's id alone (ev-...), or its full name "
            "without MODEL and VERSION",
            EXIT_USAGE,
        )
    with server_errors(), client(args) as c:
        if args.version is None:
            name = args.ref
        else:
            version = numbered_version(c, args.ref, args.version, out)
            name = f"{version_name(args.ref, version)}/evaluations/{args.eval_id}"
        ev = c.get_evaluation(name)
    show(ev, out)
    return 0
