"""Reading a dataset (Parquet, Arrow IPC file or stream, CSV) into a pyarrow Table.

The format is told by the bytes themselves, never by a file name: Parquet starts with
``PAR1``, an Arrow IPC file with ``ARROW1``, an Arrow IPC stream with a message header, and
anything else that decodes as UTF-8 text is tried as CSV.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from modelplane.errors import InvalidArgument

Format = Literal["parquet", "arrow", "csv"]

_PARQUET_MAGIC = b"PAR1"
_ARROW_FILE_MAGIC = b"ARROW1"
_STREAM_CONTINUATION = b"\xff\xff\xff\xff"
_TEXT_PROBE = 64 * 1024


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_DATASET")


def _head(data: bytes | str | os.PathLike[str], size: int) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data[:size])
    try:
        with open(data, "rb") as handle:
            return handle.read(size)
    except OSError as err:
        raise _invalid(f"cannot read dataset file {os.fspath(data)!r}: {err.strerror}") from err


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _looks_like_stream(head: bytes) -> bool:
    # An IPC stream message starts with the continuation marker and a positive metadata
    # length (pre-1.0 writers omit the marker and start with the length directly).
    if head.startswith(_STREAM_CONTINUATION) and len(head) >= 8:
        return int.from_bytes(head[4:8], "little", signed=True) > 0
    return False


def detect_format(data: bytes | str | os.PathLike[str]) -> Format:
    """Which format ``data`` (bytes or a file path) holds: ``parquet``, ``arrow`` or ``csv``.

    Arrow covers both the IPC file and the IPC stream format. Raises
    ``InvalidArgument(reason="INVALID_DATASET")`` when the content is empty or is binary data
    in none of these formats.
    """
    head = _head(data, _TEXT_PROBE)
    if not head:
        raise _invalid("the dataset is empty: expected Parquet, Arrow IPC or CSV content")
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_ARROW_FILE_MAGIC) or _looks_like_stream(head):
        return "arrow"
    if _looks_like_text(head):
        return "csv"
    raise _invalid(
        "the dataset is not Parquet, Arrow IPC (file or stream) or UTF-8 CSV; "
        "check that the file was written completely in one of these formats"
    )


def _source(data: bytes | str | os.PathLike[str]) -> pa.NativeFile:
    if isinstance(data, bytes | bytearray | memoryview):
        return pa.BufferReader(pa.py_buffer(data))
    return pa.memory_map(os.fspath(data), "r")


def _read_arrow(data: bytes | str | os.PathLike[str]) -> pa.Table:
    head = _head(data, len(_ARROW_FILE_MAGIC))
    with _source(data) as source:
        if head.startswith(_ARROW_FILE_MAGIC):
            return ipc.open_file(source).read_all()
        return ipc.open_stream(source).read_all()


#: How every CSV is parsed: a quoted cell may hold line breaks (pandas and Python's csv module
#: write multi-line text so), whatever the size of the file.
CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)

#: CSV conversion of the other columns: Arrow's usual null spellings (an empty cell, ``NA``,
#: ``null``, ``NaN``, ...) are missing values in number columns, as pandas reads them. Text
#: columns keep every spelling as text (``NA`` may be a country code); :func:`_empty_is_missing`
#: then takes their empty cells alone as missing.
_DEFAULT = pacsv.ConvertOptions()

#: CSV reading for profiles: a column becomes boolean only when spelled ``true``/``false``,
#: the spelling :func:`modelplane.profiles.category_strings` gives booleans back, so every
#: other spelling (``True``, ``FALSE``, ...) stays the text that served strings match.
_TEXT_BOOLEANS = pacsv.ConvertOptions(true_values=["true"], false_values=["false"])


def _empty_is_missing(table: pa.Table) -> pa.Table:
    """``table`` with the empty cells of its text columns missing (null), as in its number
    columns and as pandas reads a CSV, so that a CSV and a Parquet copy of the same data agree;
    other text (``NA``, ``null``) stays text."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = table.column(i)
            empty = pc.equal(pc.binary_length(column), 0)
            if pc.any(empty).as_py():
                nulls = pa.nulls(len(column), field.type)
                table = table.set_column(i, field, pc.if_else(empty, nulls, column))
    return table


def _read_csv(data: bytes | str | os.PathLike[str], text_booleans: bool) -> pa.Table:
    options = _TEXT_BOOLEANS if text_booleans else _DEFAULT
    if isinstance(data, bytes | bytearray | memoryview):
        source: io.BytesIO | str = io.BytesIO(bytes(data))
    else:
        source = os.fspath(data)
    table = pacsv.read_csv(source, parse_options=CSV_PARSE, convert_options=options)
    return _empty_is_missing(table)


def _read_parquet(data: bytes | str | os.PathLike[str]) -> pa.Table:
    source = (
        pa.BufferReader(pa.py_buffer(data))
        if isinstance(data, bytes | bytearray | memoryview)
        else os.fspath(data)
    )
    parquet = pq.ParquetFile(source)
    # The schema first: reading a file that repeats a column name fails with an Arrow error
    # that does not say so.
    check_unique_columns(parquet.schema_arrow)
    return parquet.read()


def check_unique_columns(table: pa.Table | pa.Schema) -> None:
    """Refuse a table (or schema) that names a column more than once: a column is looked up by
    its name, so a repeated one is ambiguous. Raises
    ``InvalidArgument(reason="DUPLICATE_COLUMNS")`` naming the repeated column(s)
    (``metadata["columns"]``, comma-separated)."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    if len(set(names)) == len(names):
        return
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    listed = ", ".join(repr(n) for n in repeated[:10])
    raise InvalidArgument(
        f"the dataset has more than one column named {listed}; give every column a distinct name",
        reason="DUPLICATE_COLUMNS",
        metadata={"columns": ",".join(repeated)},
    )


def read_csv_text(data: bytes, names: list[str]) -> pa.Table:
    """Columns ``names`` of CSV ``data`` read as text, whatever they look like (``True`` stays
    ``True``, not a boolean): for columns that feed string inputs. Empty cells are missing, as
    in :func:`read_table`."""
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names}, include_columns=names
    )
    try:
        table = pacsv.read_csv(io.BytesIO(data), parse_options=CSV_PARSE, convert_options=convert)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _invalid(f"cannot read the dataset as csv: {err}") from err
    return _empty_is_missing(table)


def read_table(data: bytes | str | os.PathLike[str], *, text_booleans: bool = False) -> pa.Table:
    """Read a dataset given as bytes or a file path into a pyarrow Table.

    The format comes from the content (see :func:`detect_format`). Unreadable, truncated or
    malformed data raise ``InvalidArgument(reason="INVALID_DATASET")`` whose message names the
    format that was tried and the parser's complaint; data that repeats a column name, in any
    format, ``InvalidArgument(reason="DUPLICATE_COLUMNS")`` naming it.

    In a CSV a quoted cell may span lines, and an empty cell is a missing value (null) in every
    column, text columns too (as pandas reads it). A CSV column of ``true``/``false``,
    ``True``/``False``, ``TRUE``/``FALSE`` or ``1``/``0`` text reads as boolean (``1``/``0``
    alone as integers). With ``text_booleans`` only the ``true``/``false`` spelling does and
    other spellings stay strings: what profiling wants, since a category keeps the text a
    served string input carries (a profile would otherwise hold ``true`` where requests send
    ``True``).

    Columns that pandas wrote for an unnamed index (``__index_level_0__``, listed as index
    columns in a Parquet or Arrow file's pandas metadata) are left out: they are row labels.
    """
    fmt = detect_format(data)
    try:
        if fmt == "parquet":
            table = _read_parquet(data)
        elif fmt == "arrow":
            table = _read_arrow(data)
        else:
            table = _read_csv(data, text_booleans)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _invalid(f"cannot read the dataset as {fmt}: {err}") from err
    check_unique_columns(table)
    return _without_unnamed_index(table)


_UNNAMED_INDEX = re.compile(r"__index_level_\d+__")


def _without_unnamed_index(table: pa.Table) -> pa.Table:
    """``table`` without the columns pandas stored for an unnamed index (``df.to_parquet()``
    of a frame whose index is not a plain 0..n-1 range, such as a ``train_test_split`` half,
    writes it as ``__index_level_0__`` and lists it as an index in the file's pandas
    metadata): row labels, not data. A named index (``df.set_index("id")``) stays a column."""
    raw = (table.schema.metadata or {}).get(b"pandas")
    if raw is None:
        return table
    try:
        listed = json.loads(raw).get("index_columns", [])
    except (ValueError, AttributeError):
        return table  # metadata pandas would not read either: the columns are left as they are
    drop = [
        name
        for name in listed
        if isinstance(name, str) and _UNNAMED_INDEX.fullmatch(name) and name in table.column_names
    ]
    return table.drop_columns(drop) if drop else table
