"""``modelplane labels send``: ground truth for logged predictions, to every sidecar replica.

Each replica joins the labels with the predictions it served and still remembers (live
accuracy per arm in its next window) and appends every label to its label log (``accepted``
counts those written: none from a replica without a label log, which runs without
``--log-dir``; ``matched`` those joined).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from modelplane.cli._common import call_sidecar, check_sidecar, server_errors
from modelplane.cli._extras import extra
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
    send.add_argument(
        "--kind",
        choices=("class", "target"),
        help=(
            "send the labels as classes (classifiers; whole numbers) or targets (regression); "
            "default: classes for an integer or boolean column, targets otherwise"
        ),
    )
    send.set_defaults(handler=_send)


def _read(path: Path, label: str) -> Any:
    with extra("sidecar", "reading labels from a file"):
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.feather as feather
        import pyarrow.parquet as pq

    try:
        if path.suffix == ".csv":
            # Request ids are text: "000123" must not become the number 123.
            types = {"request_id": pa.string()}
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
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


def _line(path: Path, i: int) -> str:
    """Where data row ``i`` of ``path`` is, for messages (CSV: its line, after the header)."""
    return f"{path}, line {i + 2}" if path.suffix == ".csv" else f"{path}, row {i}"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _row(value: Any, where: str) -> int:
    if value is None:
        raise CliError(
            f"{where}: the row cell is empty; give the row of the request's batch (0 for a "
            "single-row request)",
            EXIT_USAGE,
        )
    number = _number(value)
    if not (number >= 0 and number.is_integer()):
        raise CliError(f"{where}: row {value!r} is not a row number (0, 1, ...)", EXIT_USAGE)
    return int(number)


def _labels(table: Any, label: str, path: Path, kind: str | None = None) -> list[Any]:
    """One ``Label`` per row with a label value (rows without one are skipped). ``kind``
    ("class" or "target") says how values are sent; by default the column's type does
    (integers and booleans are classes)."""
    import pyarrow.types as pt

    from modelplane.v1 import sidecar_pb2

    ids = ["" if x is None else str(x) for x in table.column("request_id").to_pylist()]
    rows = table.column("row").to_pylist() if "row" in table.column_names else [0] * len(ids)
    column = table.column(label)
    if kind is None:
        kind = "class" if pt.is_integer(column.type) or pt.is_boolean(column.type) else "target"
    out = []
    for i, (rid, row, value) in enumerate(zip(ids, rows, column.to_pylist(), strict=True)):
        if value is None:
            continue
        where = _line(path, i)
        number = _row(row, where)
        truth = value if isinstance(value, int) else _number(value)
        if kind == "class":
            if not (isinstance(truth, int) or truth.is_integer()):
                raise CliError(
                    f"{where}: label {value!r} is not a class (a whole number); send targets "
                    "with --kind target",
                    EXIT_USAGE,
                )
            out.append(sidecar_pb2.Label(request_id=rid, row=number, class_label=int(truth)))
        elif math.isfinite(truth):
            out.append(sidecar_pb2.Label(request_id=rid, row=number, target=float(truth)))
        else:
            raise CliError(f"{where}: label {value!r} is not a finite number", EXIT_USAGE)
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
    for address in args.sidecar:  # all of them before any is sent to
        check_sidecar(address)
    table = _read(args.file, args.label)
    labels = _labels(table, args.label, args.file, args.kind)
    results: list[dict[str, Any]] = []
    with server_errors():
        for address in args.sidecar:
            try:
                accepted, matched = _send_one(address, labels, args.timeout)
            except BaseException:
                if results:
                    done = ", ".join(r["sidecar"] for r in results)
                    out.progress(
                        f"note: {done} had every label before {address} failed; sending "
                        "again is harmless (a sidecar counts each row's label once)"
                    )
                raise
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
