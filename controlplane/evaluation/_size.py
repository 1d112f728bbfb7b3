"""How large a dataset is, read from its metadata before the data itself, so that a small
upload that expands into a huge table (a Parquet file of a few kilobytes can hold millions of
rows of repeated values) is refused without the memory it would take.

Parquet: the footer's row count; an Arrow IPC file: the row counts of its batches (metadata
only); an Arrow IPC stream and CSV: the rows read batch by batch, stopping as soon as a limit
is passed.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from modelplane.errors import ResourceExhausted
from modelplane.profiles import detect_format

_ARROW_FILE_MAGIC = b"ARROW1"


def _too_large(what: str, limit: str, setting: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"the dataset has {what}; this server evaluates datasets of at most {limit} "
        f"(setting {setting}); evaluate a sample, or raise the limit",
        reason="DATASET_TOO_LARGE",
        metadata={"limit": limit.split()[0].replace(",", ""), "setting": setting},
    )


class _Counter:
    def __init__(self, max_rows: int, max_cells: int, settings: tuple[str, str]) -> None:
        self.max_rows, self.max_cells, self.settings = max_rows, max_cells, settings
        self.rows = 0

    def add(self, rows: int, columns: int, exact: bool = True) -> None:
        self.rows += rows
        more = "" if exact else "more than "
        if self.rows > self.max_rows:
            raise _too_large(
                f"{more}{self.rows:,} rows", f"{self.max_rows:,} rows", self.settings[0]
            )
        cells = self.rows * max(columns, 1)
        if cells > self.max_cells:
            raise _too_large(
                f"{more}{self.rows:,} rows x {columns} columns = {cells:,} cells",
                f"{self.max_cells:,} cells",
                self.settings[1],
            )


def check_dataset_size(
    data: bytes,
    *,
    max_rows: int,
    max_cells: int,
    settings: tuple[str, str] = ("max_rows", "max_cells"),
) -> None:
    """Refuse (RESOURCE_EXHAUSTED, reason DATASET_TOO_LARGE) a dataset of more than
    ``max_rows`` rows or ``max_cells`` rows x columns; ``settings`` name the two limits in the
    message. Content that cannot be read is left to the reader to refuse."""
    counter = _Counter(max_rows, max_cells, settings)
    fmt = detect_format(data)
    source = pa.BufferReader(pa.py_buffer(data))
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(source).metadata
            counter.add(meta.num_rows, len(meta.schema.to_arrow_schema()))
        elif fmt == "arrow" and bytes(data[:6]) == _ARROW_FILE_MAGIC:
            reader = ipc.open_file(source)
            counter.add(reader.count_rows(), len(reader.schema))
        elif fmt == "arrow":
            stream = ipc.open_stream(source)
            for batch in stream:
                counter.add(batch.num_rows, batch.num_columns, exact=False)
        else:
            for batch in pacsv.open_csv(io.BytesIO(bytes(data))):
                counter.add(batch.num_rows, batch.num_columns, exact=False)
    except (pa.ArrowException, OSError, ValueError):
        return
