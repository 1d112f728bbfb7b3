"""Compaction: the log as Parquet partitioned by date, model name and model version, for
DuckDB or Spark."""

from __future__ import annotations

import functools
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sidecar.predlog.reader import LogFilter, file_schema, read_file_batches
from sidecar.predlog.schemas import conform, unify

PARTITION_COLUMNS = ("date", "model_name", "model_version")
#: Parquet being written is named ``.<log file name>-0.parquet.tmp-<random>``.
_TMP_PREFIX = "."
_TMP_MARK = ".tmp-"
#: A temporary older than this was left by a compaction killed midway.
STALE_TMP_S = 3600.0
#: The ``user:secret@`` of a URI (pyarrow takes S3 keys there). A secret may hold "/" or "@"
#: unescaped, so after a ":" everything up to the token's last "@" goes.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"/@:]*(?::[^\s'\"]*)?@")


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URI in it (``s3://KEY:SECRET@bucket``) replaced
    by ``***``, for messages and summaries that name a destination."""
    return _USERINFO.sub(r"\1***@", text)


@dataclass
class CompactResult:
    """What one compaction wrote."""

    rows: int = 0
    source_files: int = 0
    files: list[str] = field(default_factory=list)
    #: The destination as given, its credentials redacted (see :func:`redact_uri`).
    out: str = ""


def resolve_destination(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and path for a local path or any ``pyarrow.fs`` URI (``file:///``...)."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ValueError(
            redact_uri(f"{uri!r} is not a path or filesystem URI pyarrow can write: {exc}")
        ) from None


def schema_groups(schemas: dict[Path, pa.Schema]) -> dict[Path, pa.Schema]:
    """Each file's schema widened to that of its group: files whose schemas merge share one.

    Versions whose outputs clash (a scalar against a list) form separate groups, and each
    group is written on its own into the same partitioned layout.
    """
    merged: list[pa.Schema] = []
    member_of: dict[Path, int] = {}
    for path, schema in schemas.items():
        for i, group in enumerate(merged):
            widened = unify([group, schema])
            if widened is not None:
                merged[i] = widened
                member_of[path] = i
                break
        else:
            member_of[path] = len(merged)
            merged.append(schema)
    return {path: merged[i] for path, i in member_of.items()}


def compact(directory: str | os.PathLike[str], out: str) -> CompactResult:
    """Write every record under ``directory`` as Parquet under ``out``.

    Files are laid out ``date=YYYY-MM-DD/model_name=N/model_version=V/<log file
    name>-0.parquet`` (Hive style, date in UTC): each log file's rows of a partition go to a
    file named after the log file, so compacting again overwrites what it wrote before rather
    than duplicating it, and Parquet whose log file is gone (past retention) is left alone.
    Log files whose columns clash (model versions with different outputs) are written with
    their own schema; files of one partition may differ in columns, so read them by name
    (``union_by_name = true`` in DuckDB). Partitions of different models or versions may
    differ in types too (an INT64 input in one, FP32 in another), which a reader that unifies
    them casts: read those one partition at a time.

    Each file is written under a hidden temporary name and renamed once complete, so a
    compaction killed midway leaves every Parquet file whole (the previous version of the
    one being rewritten); temporaries left by killed runs are removed once stale. A log
    file that cannot be read (permissions, I/O errors) raises ``OSError``.
    """
    paths = LogFilter().files(Path(directory))
    readable = {p: s for p, s in ((p, file_schema(p)) for p in paths) if s is not None}
    result = CompactResult(source_files=len(readable), out=redact_uri(out))
    targets = schema_groups(readable)
    if any("date" in schema.names for schema in targets.values()):
        raise ValueError("the log has a feature named 'date', which clashes with the partition")
    filesystem, base = resolve_destination(out)
    remove_stale_temporaries(filesystem, base)
    for path, schema in targets.items():
        _compact_file(path, schema, filesystem, base, result)
    return result


def _is_temporary(name: str) -> bool:
    return name.startswith(_TMP_PREFIX) and _TMP_MARK in name


def remove_stale_temporaries(
    filesystem: pafs.FileSystem, base: str, older_than_s: float = STALE_TMP_S
) -> list[str]:
    """Delete the temporaries under ``base`` that compactions killed midway left behind
    (those older than ``older_than_s``: younger ones may belong to a compaction still
    running); returns their paths."""
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    cutoff = time.time() - older_than_s
    removed = []
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not _is_temporary(info.base_name):
            continue
        if info.mtime is not None and info.mtime.timestamp() > cutoff:
            continue
        try:
            filesystem.delete_file(info.path)
        except FileNotFoundError:
            continue
        removed.append(info.path)
    return removed


def _segment(value: str | None) -> str:
    """A Hive partition value as a path segment: percent-encoded as pyarrow's Hive
    partitioning reads it back, null as Hive writes it."""
    return "__HIVE_DEFAULT_PARTITION__" if value is None else quote(value, safe="")


def _compact_file(
    path: Path, schema: pa.Schema, filesystem: pafs.FileSystem, base: str, result: CompactResult
) -> None:
    batches = [conform(b, schema) for b in read_file_batches(path)]
    table = pa.Table.from_batches(batches, schema)
    if not table.num_rows:
        return
    table = table.append_column("date", pc.strftime(table.column("timestamp"), format="%Y-%m-%d"))
    result.rows += table.num_rows

    import pyarrow.parquet as pq  # here: a serving sidecar imports this module, never compacts

    # Each partition's folder is named here, Hive style, and written with pq.write_table:
    # pyarrow.dataset's writer (its thread pool and Python file visitor) made about one
    # `modelplane logs compact` in eight abort at exit on a loaded machine ("terminate called
    # without an active exception", exit 134) after it had written everything. The final name
    # depends only on the log file, so a later run replaces exactly this file. The temporary
    # name starts with "." and does not end in ".parquet", so neither pyarrow datasets, Spark
    # nor DuckDB globs ("**/*.parquet") read a half-written file. The partition columns live in
    # the folder names, not in the file, as Hive partitioning has them.
    final_name = f"{path.stem}-0.parquet"
    keys = table.select(list(PARTITION_COLUMNS)).group_by(list(PARTITION_COLUMNS)).aggregate([])
    for values in keys.to_pylist():
        same = [_equal(table.column(name), values[name]) for name in PARTITION_COLUMNS]
        part = table.filter(functools.reduce(pc.and_, same))
        folder = "/".join(
            [base, *(f"{name}={_segment(values[name])}" for name in PARTITION_COLUMNS)]
        )
        filesystem.create_dir(folder, recursive=True)
        temporary = f"{folder}/{_TMP_PREFIX}{path.stem}-0.parquet{_TMP_MARK}{uuid.uuid4().hex}"
        pq.write_table(part.drop_columns(list(PARTITION_COLUMNS)), temporary, filesystem=filesystem)
        final_path = f"{folder}/{final_name}"
        filesystem.move(temporary, final_path)
        result.files.append(final_path)
        # Compactions before the model name was a partition wrote this log file's rows to
        # date=D/model_version=V: they are here now, and must not be read twice.
        legacy = f"{base}/date={_segment(values['date'])}/model_version="
        legacy += f"{_segment(values['model_version'])}/{final_name}"
        if filesystem.get_file_info(legacy).type == pafs.FileType.File:
            filesystem.delete_file(legacy)


def _equal(column: pa.ChunkedArray, value: str | None) -> pa.ChunkedArray:
    """Where ``column`` holds ``value`` (null where it is null)."""
    return pc.is_null(column) if value is None else pc.equal(column, value)
