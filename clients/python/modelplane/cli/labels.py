"""``modelplane labels send``: ground truth for logged predictions, to every sidecar replica.

Each replica joins the labels with the predictions it served and still remembers (live
accuracy per arm in its next window) and appends every label to its label log (``accepted``
counts those written: none from a replica without a label log, which runs without
``--log-dir``; ``matched`` those joined).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelplane.cli._common import call_sidecar, server_errors
from modelplane.cli._output import EXIT_USAGE, CliError, Printer

BATCH = 5_000


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``labels`` commands."""
    p = sub.add_parser("labels", help="ground-truth labels for logged predictions")
    s = p.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    send = s.add_parser(
        "send",
        help="send labels to sidecars (each joins the predictions it served)",
        description=(
            "Read labels from a CSV, Parquet or Arrow file with the columns request_id, row "
            "(optional, default 0) and the label column, and send them to every --sidecar."
        ),
    )
    send.add_argument("file", type=Path, help="CSV, Parquet or Arrow file")
    send.add_argument(
        "--sidecar",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a sidecar replica (repeatable: send to every replica)",
    )
    send.add_argument("--label", default="label", help="the label column (default label)")
    send.set_defaults(handler=_send)


def _read(path: Path, label: str) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".csv":
            table = pacsv.read_csv(path)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = feather.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CliError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    missing = {"request_id", label} - set(table.column_names)
    if missing:
        raise CliError(
            f"{path} lacks the column(s) {', '.join(sorted(missing))}; it has "
            f"{', '.join(table.column_names)}",
            EXIT_USAGE,
        )
    return table


def _labels(table: Any, label: str) -> list[Any]:
    import pyarrow.types as pt

    from modelplane.v1 import sidecar_pb2

    ids = ["" if x is None else str(x) for x in table.column("request_id").to_pylist()]
    rows = (
        [int(x) for x in table.column("row").to_pylist()]
        if "row" in table.column_names
        else [0] * len(ids)
    )
    column = table.column(label)
    integer = pt.is_integer(column.type) or pt.is_boolean(column.type)
    out = []
    for rid, row, value in zip(ids, rows, column.to_pylist(), strict=True):
        if value is None:
            continue
        if integer:
            out.append(sidecar_pb2.Label(request_id=rid, row=row, class_label=int(value)))
        else:
            out.append(sidecar_pb2.Label(request_id=rid, row=row, target=float(value)))
    return out


def _send_one(address: str, labels: list[Any], timeout: float) -> tuple[int, int]:
    from modelplane.v1 import sidecar_pb2

    accepted = matched = 0
    for start in range(0, len(labels), BATCH):
        request = sidecar_pb2.IngestLabelsRequest(labels=labels[start : start + BATCH])
        reply = call_sidecar(address, "IngestLabels", request, timeout)
        accepted += reply.accepted
        matched += reply.matched
    return accepted, matched


def _send(args: argparse.Namespace, out: Printer) -> int:
    table = _read(args.file, args.label)
    labels = _labels(table, args.label)
    results = []
    with server_errors():
        for address in args.sidecar:
            accepted, matched = _send_one(address, labels, args.timeout)
            results.append({"sidecar": address, "accepted": accepted, "matched": matched})
            if labels and not accepted:
                out.progress(
                    f"note: {address} keeps no label log (it runs without --log-dir): it "
                    f"joined and counted {matched} label(s) but wrote none (accepted 0)"
                )
    out.emit(
        {"labels": len(labels), "sidecars": results},
        columns=["sidecar", "accepted", "matched"],
        rows=[[r["sidecar"], r["accepted"], r["matched"]] for r in results],
    )
    return 0
