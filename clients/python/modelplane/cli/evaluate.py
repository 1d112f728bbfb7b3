"""``modelplane evaluate``: run a server-side evaluation of a version on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelplane._client import operation_error
from modelplane.cli._common import add_request_id, client, csv_list, duration, server_errors
from modelplane.cli._output import EXIT_NOT_DONE, EXIT_USAGE, CliError, Printer, to_dict
from modelplane.cli.operations import COLUMNS as COLUMNS_OPERATION
from modelplane.cli.operations import row as operation_row
from modelplane.cli.operations import waited
from modelplane.v1 import evaluation_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate`` command."""
    p = sub.add_parser(
        "evaluate",
        help="evaluate a version on a labelled dataset on the server",
        description="Upload a dataset (Parquet, Arrow or CSV) and have the control plane run the "
        "version over it: metrics, slices, fairness, data validation, and deltas against the "
        "version an alias points to.",
    )
    p.add_argument("name", help="model id")
    p.add_argument("version", help="version number or @ALIAS")
    p.add_argument("--data", required=True, type=Path, help="the dataset file")
    p.add_argument("--label", required=True, help="label column")
    p.add_argument("--features", help="comma-separated feature columns in model-input order")
    p.add_argument(
        "--slice", action="append", default=[], metavar="COL", help="a slice column (repeatable)"
    )
    p.add_argument(
        "--protected",
        action="append",
        default=[],
        metavar="COL",
        help="a protected attribute for fairness (repeatable)",
    )
    p.add_argument(
        "--compare-to",
        default="champion",
        metavar="ALIAS",
        help="alias whose version is compared on the same data (default champion; '-' for none)",
    )
    p.add_argument("--role", default="holdout", help="dataset role (default holdout)")
    p.add_argument(
        "--task",
        choices=["classification", "regression"],
        default="",
        help="the model's task when its outputs leave it unclear (default: detected; a single "
        "float output is a probability, so a classifier, when a Sigmoid or Softmax makes it or "
        "its name says prob, or when another output's name says label; else a regressor)",
    )
    p.add_argument(
        "--positive-class",
        default="",
        metavar="CLASS",
        help="the class binary metrics and fairness call positive (default: the model's second "
        "class)",
    )
    p.add_argument("--wait", action="store_true", help="wait and print the report")
    p.add_argument(
        "--wait-timeout",
        type=duration(above_zero=True),
        default=600.0,
        metavar="DURATION",
        help="time to wait: seconds (90) or with units (30s, 10m) (default 600); still running "
        "then: exit 5, with the operation on stdout as operations wait prints it",
    )
    add_request_id(p)
    p.set_defaults(handler=_evaluate)


COLUMNS = ["metric", "value", "delta"]


def _rows(ev: evaluation_pb2.Evaluation) -> list[list[object]]:
    return [
        [name, f"{value:.6g}", f"{ev.deltas[name]:+.6g}" if name in ev.deltas else ""]
        for name, value in sorted(ev.metrics.items())
    ]


def _evaluate(args: argparse.Namespace, out: Printer) -> int:
    if not args.data.is_file():
        raise CliError(f"--data {args.data}: no such file", EXIT_USAGE)
    with server_errors(), client(args) as c:
        out.progress(f"uploading {args.data}")
        op = c.evaluate(
            args.name,
            args.version,
            args.data,
            label=args.label,
            features=csv_list(args.features),
            slices=args.slice,
            protected=args.protected,
            compare_to=args.compare_to,
            role=args.role,
            task=args.task,
            positive_class=args.positive_class,
            request_id=args.request_id or None,
        )
        if not args.wait:
            out.emit(op, columns=["operation", "target"], rows=[[op.name, op.target]])
            return 0
        out.progress(f"evaluating ({op.name})")
        op = waited(c, op, args.wait_timeout)
        if not op.done:
            # As operations wait does: the operation as it stands on stdout (its name is
            # what to wait on again), and exit 5.
            out.emit(op, columns=COLUMNS_OPERATION, rows=[operation_row(op)])
            out.error(
                CliError(
                    f"{op.name} is still running after {args.wait_timeout:g}s; it goes on: "
                    f"modelplane operations wait {op.name}",
                    EXIT_NOT_DONE,
                    reason="OPERATION_TIMEOUT",
                )
            )
            return EXIT_NOT_DONE
        if op.HasField("error"):
            raise operation_error(op.error)
        ev = evaluation_pb2.Evaluation()
        op.result.Unpack(ev)
    show(ev, out)
    return 0


def show(ev: evaluation_pb2.Evaluation, out: Printer) -> None:
    """Print an evaluation as ``evaluate --wait`` and ``evaluations get`` do: its metrics with
    their deltas as a table, then the report's warnings on stderr (``warning: CODE message``);
    with ``--output json`` the whole evaluation as one document, warnings in its report."""
    title = f"{ev.name} ({ev.rows} rows"
    title += f", compared with {ev.compared_version})" if ev.compared_version else ")"
    out.emit(to_dict(ev), columns=COLUMNS, rows=_rows(ev), title=title)
    if not out.json_output:  # the JSON document holds them in its report
        for code, message in _warnings(ev):
            out.progress(f"warning: {code} {message}")


def _warnings(ev: evaluation_pb2.Evaluation) -> list[tuple[str, str]]:
    """The report's warnings as (code, message), each message on one line."""
    listed = ev.report.fields.get("warnings")
    if listed is None:
        return []
    out = []
    for value in listed.list_value.values:
        fields = value.struct_value.fields
        message = " ".join(fields["message"].string_value.split()) if "message" in fields else ""
        out.append((fields["code"].string_value if "code" in fields else "", message))
    return out
