"""``modelplane labels send``: ground truth for logged predictions, to every sidecar replica.

Each replica joins the labels with the predictions it served and still remembers (live
accuracy per arm in its next window) and appends every label to its label log (``accepted``
counts those written: none from a replica without a label log, which runs without
``--log-dir``; ``matched`` those joined). Every cell is checked before anything is sent, and
every sidecar is sent to even when one fails; the result names each sidecar's outcome.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane._client import ServerUnreachable
from modelplane.cli._common import INT64_MAX, check_sidecar, server_errors, sidecar_error
from modelplane.cli._extras import extra
from modelplane.cli._output import (
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
)

BATCH = 5_000
#: The smallest value of protobuf's int64, the type of a class and a row.
INT64_MIN = -(2**63)
#: How a whole number is written in a CSV cell.
_WHOLE = re.compile(r"[+-]?[0-9]+")


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

        from modelplane.profiles import CSV_PARSE

    try:
        if path.suffix == ".csv":
            # Request ids are text: "000123" must not become the number 123.
            types = {"request_id": pa.string()}
            table = pacsv.read_csv(
                path,
                parse_options=CSV_PARSE,
                convert_options=pacsv.ConvertOptions(column_types=types),
            )
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
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _row(value: Any, where: str) -> int:
    if value is None:
        raise CliError(
            f"{where}: the row cell is empty; give the row of the request's batch (0 for a "
            "single-row request)",
            EXIT_USAGE,
        )
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        whole = _number(value)
        if not (whole >= 0 and whole.is_integer()):
            raise CliError(f"{where}: row {value!r} is not a row number (0, 1, ...)", EXIT_USAGE)
        number = int(whole)
    if number < 0:
        raise CliError(f"{where}: row {value!r} is not a row number (0, 1, ...)", EXIT_USAGE)
    if number > INT64_MAX:
        raise CliError(
            f"{where}: row {value!r} is out of range (a row number is 0 to {INT64_MAX})",
            EXIT_USAGE,
        )
    return number


def _label(rid: str, row: int, value: Any, kind: str, where: str) -> Any:
    """The ``Label`` for one cell, sent as a class or a target (``kind``); a value that
    cannot be sent as one is a usage error at ``where``."""
    from modelplane.v1 import sidecar_pb2

    if value is None:
        raise CliError(
            f"{where}: the label cell is empty (pyarrow reads an empty cell and NaN, N/A, "
            "NULL and the like as missing); give every row its label, or leave out the rows "
            "that have none",
            EXIT_USAGE,
        )
    if kind == "target":
        target = _number(value)
        if not math.isfinite(target):
            raise CliError(f"{where}: label {value!r} is not a finite number", EXIT_USAGE)
        return sidecar_pb2.Label(request_id=rid, row=row, target=target)
    if isinstance(value, int):
        whole = int(value)
    else:
        number = _number(value)
        if not (math.isfinite(number) and number.is_integer()):
            raise CliError(
                f"{where}: label {value!r} is not a class (a whole number); send targets "
                "with --kind target",
                EXIT_USAGE,
            )
        whole = int(number)
    if not INT64_MIN <= whole <= INT64_MAX:
        raise CliError(
            f"{where}: label {value!r} is out of range for a class ({INT64_MIN} to "
            f"{INT64_MAX}); send targets with --kind target",
            EXIT_USAGE,
        )
    return sidecar_pb2.Label(request_id=rid, row=row, class_label=whole)


def _refuse_huge_classes(path: Path, label: str, column: Any) -> None:
    """A CSV column of whole numbers is classes, but pyarrow reads it as floats when one of
    them does not fit int64: refuse such a column, naming the first number too large, rather
    than send it as targets. A column with a number written otherwise (``1.5``, ``1e20``)
    stays targets."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.types as pt

    from modelplane.profiles import CSV_PARSE

    if not pt.is_floating(column.type):
        return
    if not pc.any(pc.greater_equal(pc.abs(column), 2.0**63)).as_py():
        return
    options = pacsv.ConvertOptions(column_types={label: pa.string()}, include_columns=[label])
    text = (
        pacsv.read_csv(path, parse_options=CSV_PARSE, convert_options=options)
        .column(label)
        .to_pylist()
    )
    values = column.to_pylist()
    cells = [
        (i, cell.strip())
        for i, (cell, v) in enumerate(zip(text, values, strict=True))
        if v is not None
    ]
    if not all(_WHOLE.fullmatch(cell) for _, cell in cells):
        return
    huge = next(((i, c) for i, c in cells if not INT64_MIN <= int(c) <= INT64_MAX), None)
    if huge is not None:
        raise CliError(
            f"{_line(path, huge[0])}, column {label}: label {huge[1]} is out of range for a "
            f"class ({INT64_MIN} to {INT64_MAX}); send the column as targets with --kind target",
            EXIT_USAGE,
        )


def _labels(table: Any, label: str, path: Path, kind: str | None = None) -> list[Any]:
    """One ``Label`` per row; a cell that cannot be sent (an empty request id, row or label,
    a value out of range) is a usage error naming its line. ``kind`` ("class" or "target")
    says how values are sent; by default the column's type does (integers and booleans are
    classes, as is a CSV column of whole numbers too large for int64, which is refused)."""
    import pyarrow.types as pt

    ids = table.column("request_id").to_pylist()
    rows = table.column("row").to_pylist() if "row" in table.column_names else [0] * len(ids)
    column = table.column(label)
    if kind is None:
        kind = "class" if pt.is_integer(column.type) or pt.is_boolean(column.type) else "target"
        if path.suffix == ".csv":
            _refuse_huge_classes(path, label, column)
    out = []
    for i, (rid, row, value) in enumerate(zip(ids, rows, column.to_pylist(), strict=True)):
        where = _line(path, i)
        if rid is None or str(rid) == "":
            raise CliError(
                f"{where}: the request_id cell is empty; give the id the prediction was "
                "answered under",
                EXIT_USAGE,
            )
        number = _row(row, where)
        out.append(_label(str(rid), number, value, kind, f"{where}, column {label}"))
    return out


@dataclass
class _Outcome:
    """What one sidecar took: the labels of the batches it answered (``delivered``) and its
    counts, and the error that stopped it, if one did."""

    sidecar: str
    delivered: int = 0
    batches: int = 0
    accepted: int = 0
    matched: int = 0
    error: CliError | None = None

    def as_dict(self) -> dict[str, Any]:
        """The outcome as the JSON output shows it."""
        error = self.error
        return {
            "sidecar": self.sidecar,
            "outcome": "done" if error is None else "failed",
            "delivered": self.delivered,
            "accepted": self.accepted,
            "matched": self.matched,
            "error": None
            if error is None
            else {"status": error.status, "reason": error.reason, "message": error.message},
        }


def _batches(count: int) -> int:
    return -(-count // BATCH)


def _failure(exc: Any, outcome: _Outcome, labels: int) -> CliError:
    """The CLI error for a call to ``outcome.sidecar`` that failed after the batches it
    answered, saying which labels those held."""
    address, done, total = outcome.sidecar, outcome.batches, _batches(labels)
    error = sidecar_error(exc, address)
    cli = CliError(error.message)
    try:
        with server_errors():  # the exit code and status the CLI gives this error
            raise error
    except CliError as mapped:
        cli = mapped
    if not done:
        cli.message += f" (no batch answered: 0 of {labels} label(s) delivered)"
        return cli
    # The sidecar answered the batches before this one: it was reached, the call broke off.
    if isinstance(error, ServerUnreachable):
        why = f"the call broke off ({exc.details()})"
    else:
        why = cli.message
    answered = f"batch 1 of {total}" if done == 1 else f"batches 1 to {done} of {total}"
    first, last = outcome.delivered + 1, min(outcome.delivered + BATCH, labels)
    cli.message = (
        f"the sidecar at {address} answered {answered} (labels 1 to {outcome.delivered} of "
        f"{labels}), then batch {done + 1} (labels {first} to {last}) failed: {why}"
    )
    return cli


def _send_one(address: str, labels: list[Any], timeout: float) -> _Outcome:
    """Send ``labels`` to one sidecar, a batch per call, until one fails."""
    import grpc

    from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

    outcome = _Outcome(address)
    with grpc.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarAdminServiceStub(channel)
        for start in range(0, len(labels), BATCH):
            batch = labels[start : start + BATCH]
            try:
                reply = stub.IngestLabels(
                    sidecar_pb2.IngestLabelsRequest(labels=batch), timeout=timeout
                )
            except grpc.RpcError as exc:
                outcome.error = _failure(exc, outcome, len(labels))
                return outcome
            outcome.batches += 1
            outcome.delivered += len(batch)
            outcome.accepted += reply.accepted
            outcome.matched += reply.matched
    return outcome


def _send(args: argparse.Namespace, out: Printer) -> int:
    for address in args.sidecar:  # all of them before any is sent to
        check_sidecar(address)
    table = _read(args.file, args.label)
    labels = _labels(table, args.label, args.file, args.kind)
    outcomes: list[_Outcome] = []
    for address in args.sidecar:
        try:
            outcome = _send_one(address, labels, args.timeout)
        except BaseException:
            done = [o.sidecar for o in outcomes if o.error is None]
            if done:
                out.progress(
                    f"note: {', '.join(done)} had every label before sending to {address} "
                    "stopped; sending again is harmless (a sidecar counts each row's label once)"
                )
            raise
        outcomes.append(outcome)
        if outcome.error is None and labels and not outcome.accepted:
            out.progress(
                f"note: {address} keeps no label log (it runs without --log-dir): it "
                f"joined and counted {outcome.matched} label(s) but wrote none (accepted 0)"
            )
    out.emit(
        {"labels": len(labels), "sidecars": [o.as_dict() for o in outcomes]},
        columns=["sidecar", "outcome", "delivered", "accepted", "matched"],
        rows=[
            [o.sidecar, o.as_dict()["outcome"], o.delivered, o.accepted, o.matched]
            for o in outcomes
        ],
    )
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return EXIT_OK
    for error in errors:
        out.error(error)
    if len(outcomes) > 1:
        done = [o.sidecar for o in outcomes if o.error is None]
        failed = [o.sidecar for o in outcomes if o.error is not None]
        out.progress(
            f"note: {len(done)} of {len(outcomes)} sidecars have every label"
            + (f" ({', '.join(done)})" if done else "")
            + f"; send the file again to {', '.join(failed)} (sending again is harmless: a "
            "sidecar counts each row's label once)"
        )
    # A sidecar that refused the labels needs a fix; one not reached, only a retry.
    codes = {error.exit_code for error in errors}
    return EXIT_SERVER_ERROR if EXIT_SERVER_ERROR in codes else EXIT_UNREACHABLE
