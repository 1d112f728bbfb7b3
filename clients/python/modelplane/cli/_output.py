"""Printing results as tables or one JSON document, and the CLI's exit codes."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER_ERROR = 3
EXIT_UNREACHABLE = 4
#: Not finished when the wait's --timeout passed (``operations wait``).
EXIT_NOT_DONE = 5
#: A bug in the CLI: an exception nothing above expected.
EXIT_INTERNAL = 70


class CliError(Exception):
    """An error the CLI reports and exits on."""

    def __init__(
        self, message: str, exit_code: int = EXIT_USAGE, *, status: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status
        self.reason = reason


def to_dict(message: Message) -> dict[str, Any]:
    """A proto message as JSON-ready data, with proto field names and defaults shown."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def finite(data: Any) -> Any:
    """``data`` with each NaN or infinite float written as protobuf's JSON mapping writes it:
    the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (bare ``NaN`` is not JSON)."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, Mapping):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


#: C0 and C1 control characters but tab and newline, and DEL: a terminal acts on them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(value: Any) -> str:
    """``value`` as a table cell: control characters written as ``\\xNN`` escapes, so that
    server data (a name read out of an uploaded model, say) cannot move the cursor, clear the
    screen or retitle the terminal."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _json_value(value: Any) -> Any:
    """What JSON cannot hold, written as the CLI's other documents write it: a datetime as
    protobuf's JSON mapping writes a Timestamp (RFC 3339 in UTC with ``Z``, and 0, 3, 6 or 9
    fractional digits, as few as hold it: ``2026-11-29T06:27:07.490Z``; a naive one is UTC);
    anything else as ``str``."""
    if isinstance(value, datetime):
        stamp = timestamp_pb2.Timestamp()
        try:
            stamp.FromDatetime(value)
        except (OverflowError, ValueError):  # before year 1 in UTC: no Timestamp holds it
            return value.isoformat()
        return stamp.ToJsonString()
    return str(value)


def dumps(data: Any, **kw: Any) -> str:
    """``data`` as strict JSON (see :func:`finite`); what JSON cannot hold goes as
    :func:`_json_value` writes it."""
    return json.dumps(finite(data), allow_nan=False, default=_json_value, **kw)


class Printer:
    """Writes results to stdout and diagnostics to stderr, in the chosen format."""

    def __init__(self, json_output: bool) -> None:
        self.json_output = json_output

    def emit(
        self,
        data: Any,
        *,
        columns: Sequence[str] | None = None,
        rows: Iterable[Sequence[Any]] | None = None,
        title: str | None = None,
    ) -> None:
        """Print ``data`` as one JSON document, or as a table when ``rows`` are given."""
        if isinstance(data, Message):
            data = to_dict(data)
        if self.json_output:
            sys.stdout.write(dumps(data, indent=2) + "\n")
            sys.stdout.flush()
            return
        from rich.table import Table
        from rich.text import Text

        # Values are server data, printed as they are: as rich markup, "[/x]" would fail and
        # "[ml]" would vanish.
        console = self.console()
        if rows is not None and columns is not None:
            table = Table(title=None if title is None else Text(shown(title)), show_lines=False)
            for col in columns:
                table.add_column(Text(col))
            for row in rows:
                table.add_row(*(Text(shown(v)) for v in row))
            console.print(table)
        elif isinstance(data, Mapping):
            console.print_json(dumps(data))
        else:
            console.print(shown(data), markup=False, highlight=False)

    def emit_tables(
        self, data: Any, tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]]
    ) -> None:
        """Print ``data`` as one JSON document, or as the given tables (title, columns, rows),
        one after the other; a table without rows is left out."""
        if isinstance(data, Message):
            data = to_dict(data)
        if self.json_output:
            self.emit(data)
            return
        from rich.table import Table
        from rich.text import Text

        console = self.console()
        for title, columns, rows in tables:
            if not rows:
                continue
            table = Table(title=Text(shown(title)), title_justify="left")
            for col in columns:
                table.add_column(Text(col))
            for row in rows:
                table.add_row(*(Text(shown(v)) for v in row))
            console.print(table)

    @staticmethod
    def console() -> Any:
        """The rich console tables are printed on: the terminal's width, or 240 columns when
        stdout is piped (not cut to 80: scripts grep it)."""
        from rich.console import Console

        return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)

    def progress(self, text: str) -> None:
        """A progress note on stderr."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def error(self, exc: CliError) -> None:
        """Report an error on stderr (and nothing on stdout)."""
        parts = ["error:"]
        if exc.status:
            parts.append(exc.status)
        if exc.reason:
            parts.append(f"({exc.reason})")
        parts.append(exc.message)
        sys.stderr.write(" ".join(parts) + "\n")
        sys.stderr.flush()
