"""`modelplane logs` commands: read and compact the sidecar's Arrow prediction log.

Times (``--since``, ``--until``) are ISO-8601 (``2026-11-26T10:00:00Z``, ``2026-11-26``; no
zone means UTC), ``now``, or relative to now: ``-30m``, ``-1h``, ``-7d``, ``-1w``, ``-1h30m``.
``--since`` is inclusive, ``--until`` exclusive. pyarrow is imported only when a command runs:
the plain CLI install does not need it for anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from modelplane.cli._common import whole_number
from modelplane.cli._extras import extra
from modelplane.cli._logs_export import for_csv, write_out
from modelplane.cli._output import EXIT_USAGE, CliError, Printer, dumps


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `logs` commands."""
    logs = sub.add_parser("logs", help="read and compact the sidecar's prediction log")
    cmds = logs.add_subparsers(dest="logs_command", metavar="COMMAND", required=True)

    read = cmds.add_parser(
        "read",
        help="print or export prediction records",
        description="Read the Arrow prediction log under DIR. " + _TIME_HELP,
    )
    read.add_argument("dir", metavar="DIR", help="the sidecar's --log-dir")
    read.add_argument("--since", metavar="T", help="first time included (ISO-8601 or -1h)")
    read.add_argument("--until", metavar="T", help="first time excluded (ISO-8601 or -1h)")
    read.add_argument(
        "--model-name",
        metavar="N",
        help="only records of this model (a folder of several sidecars' logs may hold several)",
    )
    read.add_argument("--model-version", metavar="V", help="only records of this version")
    read.add_argument(
        "--arm", choices=("champion", "candidate", "shadow"), help="only records of this arm"
    )
    read.add_argument(
        "--failed",
        action="store_true",
        help=(
            "only records whose status_code is not OK: requests refused, shed or failed, and "
            "shadow copies the candidate failed (with --arm shadow, only those)"
        ),
    )
    read.add_argument(
        "--format",
        choices=("table", "csv", "parquet"),
        default="table",
        help=(
            "table (default; JSON with --output json), csv (lists split into name[0], "
            "name[1], ...; binary values as hex), or parquet (needs --out)"
        ),
    )
    read.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    read.add_argument(
        "--limit",
        type=whole_number(),
        metavar="N",
        help="only the first N records that pass the other filters",
    )
    read.add_argument(
        "--columns",
        metavar="A,B",
        help=(
            "only these columns (e.g. request_id,row,arm,x_0); without it a table too wide "
            "for the terminal leaves the feature columns out"
        ),
    )
    read.set_defaults(handler=_read)
    # argparse takes "-1h" for an option; let relative times through as values, like
    # numbers. No option of `logs read` starts with a digit, so every "-<digit>..." is a
    # value (-1h, -1h30m, -1w); parse_time words the error when it is no time.
    read._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]

    compact = cmds.add_parser(
        "compact",
        help="write the log as Parquet partitioned by date, model and version",
        description=(
            "Write every record under DIR as Parquet under URI (a local path or a pyarrow.fs "
            "URI such as file:///data/predictions or s3://bucket/predictions), partitioned "
            "date=YYYY-MM-DD/model_name=N/model_version=V. Each log file's rows go to Parquet "
            "files named after it: compacting again overwrites them instead of duplicating "
            "records, and Parquet whose log file has since expired is kept."
        ),
    )
    compact.add_argument("dir", metavar="DIR", help="the sidecar's --log-dir")
    compact.add_argument("--out", metavar="URI", required=True, help="destination path or URI")
    compact.set_defaults(handler=_compact)


_TIME_HELP = (
    "T is ISO-8601 (2026-11-26T10:00:00Z, 2026-11-26; UTC unless a zone is given), 'now', "
    "or relative to now (-30m, -1h, -7d, -1w, -1h30m)."
)


def _predlog() -> Any:
    with extra("sidecar", "reading prediction logs"):
        import sidecar.predlog as predlog
    return predlog


def _load(args: argparse.Namespace) -> Any:
    """The records asked for: the columns, the limit and the filters are applied while the
    log is read, so that reading stops at the limit and keeps only those columns."""
    predlog = _predlog()
    if not Path(args.dir).is_dir():
        raise CliError(f"no prediction log directory at {args.dir}", EXIT_USAGE)
    wanted = [c.strip() for c in (args.columns or "").split(",") if c.strip()]
    try:
        with _torn_files_reported(predlog):
            return predlog.read_logs(
                args.dir,
                args.since or None,  # read_logs parses them, digits past microseconds rounded up
                args.until or None,
                args.model_version,
                args.arm,
                model_name=args.model_name,
                columns=wanted or None,
                limit=args.limit,
                failed=args.failed,
            )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@contextlib.contextmanager
def _torn_files_reported(predlog: Any) -> Iterator[None]:
    """Print a ``warning:`` line on stderr for each log file read that a crash or a failed
    write cut short (:class:`sidecar.predlog.TornLogFile`), once the block ends."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", predlog.TornLogFile)
            yield
    finally:
        for seen in caught:
            if issubclass(seen.category, predlog.TornLogFile):
                sys.stderr.write(f"warning: {seen.message}\n")
            else:  # shown as they would have been
                warnings.warn_explicit(seen.message, seen.category, seen.filename, seen.lineno)
        sys.stderr.flush()


def _read(args: argparse.Namespace, printer: Printer) -> int:
    table = _load(args)
    if args.format == "parquet" and not args.out:
        raise CliError("--format parquet needs --out FILE", EXIT_USAGE)
    if args.format == "table" and not args.out:
        records = table.to_pylist()
        columns = table.column_names
        if not printer.json_output and not args.columns:
            columns = _fitting_columns(records, columns, printer)
        printer.emit(
            records,
            columns=columns,
            rows=([r[c] for c in columns] for r in records),
            title=f"{table.num_rows} prediction records",
        )
        return 0
    import pyarrow as pa

    try:
        write = _writer(args.format, table)
        if args.out:
            write_out(args.out, write)
            printer.progress(f"wrote {table.num_rows} records to {args.out}")
            if printer.json_output:  # one JSON document on stdout, as every command prints
                written = "json" if args.format == "table" else args.format
                printer.emit({"path": args.out, "format": written, "records": table.num_rows})
        else:
            write(sys.stdout.buffer)
            sys.stdout.flush()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise CliError(f"cannot write these records as {args.format}: {exc}", EXIT_USAGE) from None
    return 0


def _fitting_columns(
    records: list[dict[str, Any]], columns: list[str], printer: Printer
) -> list[str]:
    """``columns``, less the feature columns when rich would have to cut words (headers or
    values) to fit the table to the terminal, as it does to every header of a model with
    dozens of features: the record columns and the outputs (``out_*``) stay, and a note on
    stderr says how many feature columns were left out and how to see them."""
    predlog = _predlog()
    base = set(predlog.BASE_SCHEMA.names)
    kept = [c for c in columns if c in base or c.startswith(predlog.OUTPUT_PREFIX)]
    left_out = len(columns) - len(kept)
    if not left_out:
        return columns
    console = printer.console()
    if not _cuts_words(console, records, columns):
        return columns
    printer.progress(
        f"note: {left_out} feature column{'s' if left_out > 1 else ''} left out, the table "
        f"being too wide for {console.width} characters: name the columns to show with "
        "--columns A,B, or see every column with --output json"
    )
    return kept


def _cuts_words(console: Any, records: list[dict[str, Any]], columns: list[str]) -> bool:
    """Whether rich, laying out these records as :meth:`Printer.emit` does, makes a column
    narrower than its longest word (its header's included)."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    from modelplane.cli._output import shown

    table = Table(show_lines=False)
    for column in columns:
        table.add_column(Text(column))
    cells = [[shown(r[c]) for c in columns] for r in records]
    for row in cells:
        table.add_row(*map(Text, row))
    # Each column needs its longest word and a space of padding on either side.
    least = [cell_len(c) + 2 for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            least[i] = max(least[i], max(map(cell_len, text.split()), default=0) + 2)
    try:  # the widths rich gives the columns, found as Table.__rich_console__ finds them
        options = console.options.update_width(console.width - table._extra_width)
        widths: list[int] = table._calculate_column_widths(console, options)
    except (AttributeError, TypeError):  # a rich without them: every column at its longest
        return sum(least) + len(columns) + 1 > console.width
    return any(w < need for w, need in zip(widths, least, strict=True))


def _writer(fmt: str, table: Any) -> Callable[[BinaryIO], object]:
    """What writes ``table`` in format ``fmt`` to a binary file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return lambda fh: pq.write_table(table, fh)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        flat = for_csv(table)
        return lambda fh: pacsv.write_csv(flat, fh)
    text = dumps(table.to_pylist()).encode("utf-8")
    return lambda fh: fh.write(text)


def _compact(args: argparse.Namespace, printer: Printer) -> int:
    predlog = _predlog()
    if not Path(args.dir).is_dir():
        raise CliError(f"no prediction log directory at {args.dir}", EXIT_USAGE)
    # pyarrow takes S3 keys in the URI (s3://KEY:SECRET@bucket): no message repeats them.
    try:
        with _torn_files_reported(predlog):
            result = predlog.compact(args.dir, args.out)
    except ValueError as exc:
        raise CliError(predlog.redact_uri(str(exc)), EXIT_USAGE) from None
    except OSError as exc:  # worded as the CLI words any OSError, credentials left out
        where = f"{exc.filename}: " if exc.filename else ""
        raise CliError(predlog.redact_uri(f"{where}{exc.strerror or exc}"), EXIT_USAGE) from None
    summary = {
        "rows": result.rows,
        "source_files": result.source_files,
        "parquet_files": len(result.files),
        "out": result.out,
    }
    printer.emit(summary, columns=list(summary), rows=[list(summary.values())], title="compacted")
    return 0
