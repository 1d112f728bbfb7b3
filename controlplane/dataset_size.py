"""How large a dataset is, read from its metadata before the data itself, so that a small
upload that expands into a huge table (a Parquet file of a few kilobytes can hold millions of
rows of repeated values) is refused without the memory it would take. Evaluations and
registrations check their datasets with it before decoding them.

Parquet: the footer's row count; an Arrow IPC file: the row counts of its batches (metadata
only); an Arrow IPC stream and CSV: the rows read batch by batch, stopping as soon as a limit
is passed (a CSV's columns read as bytes, whatever types they hold).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from modelplane.errors import InvalidArgument, ResourceExhausted
from modelplane.profiles import CSV_PARSE, detect_format

_ARROW_FILE_MAGIC = b"ARROW1"


@dataclass(frozen=True)
class _Limits:
    max_rows: int
    max_cells: int
    settings: tuple[str, str]
    dataset: str
    serves: str
    advice: str
    metadata: Mapping[str, str]

    def refusal(self, what: str, limit: str, setting: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"{self.dataset} has {what}; this server {self.serves} datasets of at most {limit} "
            f"(environment variable MODELPLANE_{setting.upper()} of the server); {self.advice}, "
            "or raise the limit",
            reason="DATASET_TOO_LARGE",
            metadata={
                **self.metadata,
                "limit": limit.split()[0].replace(",", ""),
                "setting": setting,
            },
        )


class _Counter:
    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.rows = 0

    def add(self, rows: int, columns: int, exact: bool = True) -> None:
        self.rows += rows
        # Counting stops at the batch that passes a limit: the rows after it were not read.
        more = "" if exact else "at least "
        limits = self.limits
        if self.rows > limits.max_rows:
            raise limits.refusal(
                f"{more}{self.rows:,} rows", f"{limits.max_rows:,} rows", limits.settings[0]
            )
        cells = self.rows * max(columns, 1)
        if cells > limits.max_cells:
            raise limits.refusal(
                f"{more}{self.rows:,} rows x {columns} columns = {cells:,} cells",
                f"{limits.max_cells:,} cells",
                limits.settings[1],
            )


def check_dataset_size(
    data: bytes,
    *,
    max_rows: int,
    max_cells: int,
    settings: tuple[str, str] = ("max_rows", "max_cells"),
    dataset: str = "the dataset",
    serves: str = "evaluates",
    advice: str = "evaluate a sample",
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Refuse (RESOURCE_EXHAUSTED, reason DATASET_TOO_LARGE) a dataset of more than
    ``max_rows`` rows or ``max_cells`` rows x columns. The message reads "{dataset} has N rows;
    this server {serves} datasets of at most M rows (environment variable MODELPLANE_S of the
    server); {advice}, or raise the
    limit" ("at least N rows" for an Arrow stream or a CSV, counted only up to the batch that
    passes the limit), ``settings`` naming the two limits (server settings, shown as their
    ``MODELPLANE_`` environment variables); ``metadata`` is added to its
    ErrorInfo (with ``limit`` and ``setting``). Content that cannot be read is left to the
    reader to refuse, except a CSV that turns unreadable after its first rows:
    INVALID_ARGUMENT (INVALID_DATASET)."""
    limits = _Limits(max_rows, max_cells, settings, dataset, serves, advice, metadata or {})
    counter = _Counter(limits)
    fmt = detect_format(data)
    if fmt == "csv":
        _count_csv(data, counter)
        return
    source = pa.BufferReader(pa.py_buffer(data))
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(source).metadata
            counter.add(meta.num_rows, len(meta.schema.to_arrow_schema()))
        elif bytes(data[:6]) == _ARROW_FILE_MAGIC:
            reader = ipc.open_file(source)
            counter.add(reader.count_rows(), len(reader.schema))
        else:
            stream = ipc.open_stream(source)
            for batch in stream:
                counter.add(batch.num_rows, batch.num_columns, exact=False)
    except (pa.ArrowException, OSError, ValueError):
        return


def _count_csv(data: bytes, counter: _Counter) -> None:
    """Count a CSV's rows batch by batch, every column read as bytes: the types a streaming
    reader infers from its first block need not fit the later ones (the full reader infers
    them from all of the data), and a batch that cannot be read must not end the count."""
    try:
        names = pacsv.open_csv(io.BytesIO(bytes(data)), parse_options=CSV_PARSE).schema.names
    except (pa.ArrowException, OSError, ValueError):
        return
    as_bytes = pacsv.ConvertOptions(column_types={name: pa.binary() for name in names})
    try:
        batches = pacsv.open_csv(
            io.BytesIO(bytes(data)), parse_options=CSV_PARSE, convert_options=as_bytes
        )
        for batch in batches:
            counter.add(batch.num_rows, batch.num_columns, exact=False)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InvalidArgument(
            f"cannot read the dataset as csv: {err}", reason="INVALID_DATASET"
        ) from err
