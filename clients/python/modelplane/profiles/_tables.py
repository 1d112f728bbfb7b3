"""Reading a dataset (Parquet, Arrow IPC file or stream, CSV) into a pyarrow Table.

The format is told by the bytes themselves, never by a file name: Parquet starts with
``PAR1``, an Arrow IPC file with ``ARROW1``, an Arrow IPC stream with a message header, and
anything else that decodes as UTF-8 text is tried as CSV.
"""

from __future__ import annotations

import codecs
import io
import os
from typing import Literal

import pyarrow as pa
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


#: CSV reading for profiles: a column becomes boolean only when spelled ``true``/``false``,
#: the spelling :func:`modelplane.profiles.category_strings` gives booleans back, so every
#: other spelling (``True``, ``FALSE``, ...) stays the text that served strings match.
_TEXT_BOOLEANS = pacsv.ConvertOptions(true_values=["true"], false_values=["false"])


def _read_csv(data: bytes | str | os.PathLike[str], text_booleans: bool) -> pa.Table:
    options = _TEXT_BOOLEANS if text_booleans else None
    if isinstance(data, bytes | bytearray | memoryview):
        return pacsv.read_csv(io.BytesIO(bytes(data)), convert_options=options)
    return pacsv.read_csv(os.fspath(data), convert_options=options)


def check_unique_columns(table: pa.Table) -> None:
    """Refuse a table that names a column more than once: a column is looked up by its name,
    so a repeated one is ambiguous. Raises ``InvalidArgument(reason="DUPLICATE_COLUMNS")``
    naming the repeated column(s) (``metadata["columns"]``, comma-separated)."""
    names = table.column_names
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


def read_table(data: bytes | str | os.PathLike[str], *, text_booleans: bool = False) -> pa.Table:
    """Read a dataset given as bytes or a file path into a pyarrow Table.

    The format comes from the content (see :func:`detect_format`). Unreadable, truncated or
    malformed data, and data that repeats a column name, raise
    ``InvalidArgument(reason="INVALID_DATASET")`` whose message names the format that was
    tried and the parser's complaint, or the repeated column.

    A CSV column of ``true``/``false``, ``True``/``False``, ``TRUE``/``FALSE`` or ``1``/``0``
    text reads as boolean (``1``/``0`` alone as integers). With ``text_booleans`` only the
    ``true``/``false`` spelling does and other spellings stay strings: what profiling wants,
    since a category keeps the text a served string input carries (a profile would otherwise
    hold ``true`` where requests send ``True``).
    """
    fmt = detect_format(data)
    try:
        if fmt == "parquet":
            if isinstance(data, bytes | bytearray | memoryview):
                table = pq.read_table(pa.BufferReader(pa.py_buffer(data)))
            else:
                table = pq.read_table(os.fspath(data))
        elif fmt == "arrow":
            table = _read_arrow(data)
        else:
            table = _read_csv(data, text_booleans)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _invalid(f"cannot read the dataset as {fmt}: {err}") from err
    check_unique_columns(table)
    return table
