"""Compaction: the log as Parquet partitioned by date and model version, for DuckDB or Spark."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sidecar.predlog.reader import LogFilter, file_schema, read_file_batches
from sidecar.predlog.schemas import conform, unify

PARTITION_COLUMNS = ("date", "model_version")


@dataclass
class CompactResult:
    """What one compaction wrote."""

    rows: int = 0
    source_files: int = 0
    files: list[str] = field(default_factory=list)


def resolve_destination(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and path for a local path or any ``pyarrow.fs`` URI (``file:///``...)."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ValueError(
            f"{uri!r} is not a path or filesystem URI pyarrow can write: {exc}"
        ) from exc


def compact(directory: str | os.PathLike[str], out: str) -> CompactResult:
    """Write every record under ``directory`` as Parquet under ``out``.

    Files are laid out ``date=YYYY-MM-DD/model_version=V/part-*.parquet`` (Hive style, date
    in UTC). Each (date, model version) partition present in the logs is rewritten whole, so
    compacting again replaces rather than duplicates; partitions absent from the logs (e.g.
    past retention) are left alone.
    """
    log_filter = LogFilter()
    paths = log_filter.files(Path(directory))
    schemas = [s for s in (file_schema(p) for p in paths) if s is not None]
    result = CompactResult(source_files=len(paths))
    if not schemas:
        return result
    schema = unify(schemas)
    if schema is None:
        raise ValueError(f"log files under {directory} have columns of conflicting types")
    if "date" in schema.names:
        raise ValueError("the log has a feature named 'date', which clashes with the partition")
    out_schema = schema.append(pa.field("date", pa.string()))
    filesystem, base = resolve_destination(out)

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            for batch in read_file_batches(path):
                batch = conform(batch, schema)
                day = pc.strftime(batch.column("timestamp"), format="%Y-%m-%d")
                result.rows += batch.num_rows
                yield batch.append_column("date", day)

    # Imported here: pyarrow.dataset loads pandas, which a serving sidecar never needs.
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(
        pa.schema([("date", pa.string()), ("model_version", pa.string())]), flavor="hive"
    )
    ds.write_dataset(
        batches(),
        base,
        schema=out_schema,
        filesystem=filesystem,
        format="parquet",
        partitioning=partitioning,
        basename_template=f"part-{uuid.uuid4().hex[:12]}-{{i}}.parquet",
        existing_data_behavior="delete_matching",
        file_visitor=lambda written: result.files.append(written.path),
    )
    return result
