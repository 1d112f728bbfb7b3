"""Reading the log back: every complete batch of every file, even files torn or being written."""

from __future__ import annotations

import fcntl
import mmap
import os
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelplane.units import parse_time
from sidecar.predlog.files import list_log_files

#: The columns every record has (feature and output columns follow).
BASE_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("row", pa.int32()),
        ("trace_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("arm", pa.string()),
        ("status_code", pa.string()),
        ("status_reason", pa.string()),
        ("status_message", pa.string()),
        ("latency_s", pa.float64()),
        ("batch_size", pa.int32()),
    ]
)

TimeLike = datetime | str | None


def _instant(value: TimeLike) -> datetime | None:
    """A bound of the window: both are compared with times stamped in microseconds (``>=
    since``, ``< until``), so a time given with more digits rounds up to the next one."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    return parse_time(value, round_up=True)


class TornLogFile(UserWarning):
    """A log file ends in a partly written message that no writer is still writing (a crash
    or a failed write cut it): its complete batches were read, the rest left out."""


def _being_written(path: Path, size: int) -> bool:
    """Whether a writer has ``path`` open (it holds a lock on it until it closes it), or the
    file has grown past the ``size`` bytes read since."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return os.fstat(fd).st_size != size
    finally:
        os.close(fd)


def _warn_torn(path: Path, at: int, size: int) -> None:
    """Warn that ``path`` was cut at byte ``at`` of ``size``, unless it is still being written
    (a writer mid-batch leaves the same bytes)."""
    if _being_written(path, size):
        return
    warnings.warn(
        TornLogFile(
            f"prediction log file {path} is cut short: its last {size - at} byte(s), from "
            f"byte {at}, are part of a message never written whole (a crash or a failed "
            "write); the complete batches before them were read, those bytes left out"
        ),
        stacklevel=3,
    )


class DamagedLogFile(ValueError):
    """A log file holds bytes that are no Arrow message, or a message that does not decode,
    where a crash cannot have left them: complete messages follow, or the damaged message
    is complete. Reading stops rather than skip or misread the records of the file."""


def _map_file(path: Path) -> mmap.mmap | None:
    """The bytes of ``path`` memory-mapped, or None when it is empty or was removed by
    retention since it was listed; other errors (permissions, I/O) propagate."""
    try:
        with open(path, "rb") as fh:  # a Path, so names that are not UTF-8 open too
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None


def _complete_message(data: pa.Buffer, at: int, schema: pa.Schema | None) -> bool:
    """Whether a whole message starts at byte ``at``: readable, and a batch of ``schema``
    when there is one (the file's schema message may be the damaged one)."""
    try:
        message = pa.ipc.read_message(pa.BufferReader(data.slice(at)))
        if schema is None or message.type != "record batch":
            return message.type in ("schema", "record batch", "dictionary batch")
        pa.ipc.read_record_batch(message, schema).validate(full=True)
    except (pa.ArrowException, OSError, EOFError):
        return False
    return True


def _torn(data: pa.Buffer, at: int, schema: pa.Schema | None) -> bool:
    """Whether the message at byte ``at``, which did not read, is a torn tail: one the file
    ends inside, as a crash mid-write or a writer still writing leaves it.

    A complete message there, or any complete message after it, means the bytes were
    damaged instead. A torn message's body can hold the bytes that start messages (a
    validity bitmap of 32 rows does), so a later message counts only when it reads whole
    and, once the schema is known, decodes and validates as a batch of it. Arrow pads every
    message to 8 bytes, so only those boundaries are tried, and only where the marker is
    followed by a metadata length that fits (a positive multiple of 8) and a flatbuffer root
    inside it: this keeps a torn tail of many megabytes quick to rule on.
    """
    if _complete_message(data, at, schema):
        return False
    words = np.frombuffer(data, dtype="<i4", offset=at, count=(data.size - at) // 8 * 2)
    marker, length = words[0::2], words[1::2]
    root = np.append(marker[1:], 0)  # where the metadata's flatbuffer table starts
    ends = at + 8 * np.arange(len(length)) + 8 + length.astype(np.int64)
    plausible = (marker == -1) & (length > 0) & (length % 8 == 0) & (ends <= data.size)
    plausible &= (root > 0) & (root < length)
    plausible[:1] = False  # the message at ``at`` itself
    for index in np.flatnonzero(plausible):
        if _complete_message(data, at + 8 * int(index), schema):
            return False
    return True


def _damaged(path: Path, at: int, what: str, exc: BaseException) -> DamagedLogFile:
    return DamagedLogFile(
        f"prediction log file {path} is damaged at byte {at} ({what}): {exc}; "
        "move it out of the log directory to read the other files"
    )


def _open_stream(
    path: Path, warn: bool = False
) -> tuple[pa.Buffer, pa.BufferReader, pa.RecordBatchStreamReader] | None:
    """The mapped bytes of ``path``, read by a stream reader past its schema, or None when
    the file is empty, removed, or torn before its first message ends (with ``warn``, a
    :class:`TornLogFile` warning then)."""
    mapped = _map_file(path)
    if mapped is None:
        return None
    # Batches read from the buffer point into the mapping, which stays open until they are
    # all gone.
    data = pa.py_buffer(mapped)
    source = pa.BufferReader(data)
    try:
        reader = pa.ipc.open_stream(source)
    except (pa.ArrowException, OSError) as exc:
        # The stream is in memory: these mean torn or damaged bytes, not a failing disk.
        if _torn(data, 0, None):
            if warn:
                _warn_torn(path, 0, data.size)
            return None
        raise _damaged(path, 0, "schema", exc) from None
    try:
        _decode_names(reader.schema)
    except UnicodeDecodeError as exc:
        raise _damaged(path, 0, "schema", exc) from None
    return data, source, reader


def _decode_names(fields: Iterable[pa.Field]) -> None:
    """Decode every field name, nested ones too: Arrow keeps them as bytes it does not check,
    and a name that is not UTF-8 would fail wherever it is first read (a table's rows)."""
    for field in fields:
        _ = field.name
        _decode_names(field.type.field(i) for i in range(field.type.num_fields))


def read_file_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The complete batches of one file; a torn tail ends it: quietly when a writer is still
    writing the file, with a :class:`TornLogFile` warning when a crash or a failed write cut
    it.

    Every batch is validated in full before it is yielded: damaged bytes that still decode
    (offsets out of range, invalid UTF-8) would otherwise reach code that reads out of
    bounds. A damaged file raises :class:`DamagedLogFile` (a ``ValueError``) naming the
    byte and batch, rather than ending early: records after the damage must not vanish
    silently. A file removed since it was listed (retention) has no batches; a file that
    cannot be read (permissions, I/O errors) raises ``OSError``.
    """
    opened = _open_stream(path, warn=True)
    if opened is None:
        return
    data, source, reader = opened
    number = 0
    while True:
        at = source.tell()
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            if _torn(data, at, reader.schema):
                _warn_torn(path, at, data.size)
                return
            raise _damaged(path, at, f"batch {number + 1}", exc) from None
        try:
            batch.validate(full=True)
        except pa.ArrowException as exc:
            raise _damaged(path, at, f"batch {number + 1}", exc) from None
        number += 1
        yield batch


def file_schema(path: Path) -> pa.Schema | None:
    """The schema of one log file, or None when it is empty, torn before its first message or
    removed since it was listed; a damaged schema raises :class:`DamagedLogFile` and a file
    that cannot be read ``OSError``."""
    opened = _open_stream(path)
    return None if opened is None else opened[2].schema


#: How much earlier than its last record a log file's modification time may be (see
#: :meth:`LogFilter.files`).
MTIME_SLACK_SECONDS = 2.0


class LogFilter:
    """Which records to keep: a time window [since, until), optional model name, version and
    arm, and with ``failed`` only records whose ``status_code`` is not ``OK`` (refused,
    failed or shed requests, and shadow copies the candidate failed)."""

    def __init__(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        model_version: str | None = None,
        arm: str | None = None,
        *,
        model_name: str | None = None,
        failed: bool = False,
    ) -> None:
        if not isinstance(failed, bool):
            # "false" or 0 would otherwise read as the opposite of what was meant.
            raise TypeError(f"failed must be True or False, not {failed!r}")
        self.since = _instant(since)
        self.until = _instant(until)
        self.model_name = model_name
        self.model_version = model_version
        self.arm = arm
        self.failed = failed

    def files(self, directory: Path) -> list[Path]:
        """Files that may hold matching records: a file last written well before ``since``
        cannot. A file's modification time may be a little earlier than its last record's
        timestamp (the kernel stamps files from a coarser clock than ``time.time()``, and some
        file systems keep whole seconds), so only files older than ``since`` by
        :data:`MTIME_SLACK_SECONDS` are skipped."""
        if not directory.is_dir():
            raise FileNotFoundError(f"no prediction log directory at {directory}")
        paths = list_log_files(directory)
        if self.since is None:
            return paths
        cutoff = self.since.timestamp() - MTIME_SLACK_SECONDS
        kept = []
        for path in paths:
            try:
                if os.stat(path).st_mtime >= cutoff:
                    kept.append(path)
            except FileNotFoundError:
                continue
        return kept

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The matching rows of ``batch``."""
        conditions = []
        ts = batch.column("timestamp")
        if self.since is not None:
            conditions.append(pc.greater_equal(ts, pa.scalar(self.since, ts.type)))
        if self.until is not None:
            conditions.append(pc.less(ts, pa.scalar(self.until, ts.type)))
        if self.model_name is not None:
            conditions.append(pc.equal(batch.column("model_name"), self.model_name))
        if self.model_version is not None:
            conditions.append(pc.equal(batch.column("model_version"), self.model_version))
        if self.arm is not None:
            conditions.append(pc.equal(batch.column("arm"), self.arm))
        if self.failed:
            # A record without a status (none is written so) is not known to have succeeded.
            ok = pc.equal(batch.column("status_code"), "OK")
            conditions.append(pc.invert(pc.fill_null(ok, False)))
        if not conditions:
            return batch
        mask = conditions[0]
        for more in conditions[1:]:
            mask = pc.and_(mask, more)
        return batch.filter(mask)


def iter_log_batches(
    directory: str | os.PathLike[str], log_filter: LogFilter | None = None
) -> Generator[pa.RecordBatch, None, None]:
    """Matching batches of every file, oldest file first (schemas may differ between files)."""
    log_filter = log_filter or LogFilter()
    for path in log_filter.files(Path(directory)):
        for batch in read_file_batches(path):
            kept = log_filter.apply(batch)
            if kept.num_rows:
                yield kept


def join_labels(
    table: pa.Table, labels: pa.Table, keys: Sequence[str] = ("request_id", "row")
) -> pa.Table:
    """``table`` with the columns of ``labels`` joined on request id and row (left join).

    Without a ``row`` column in ``labels``, a label applies to every row of its request.
    A key ``labels`` holds more than once (a label sent again, or corrected later) counts once,
    with its last label: each record appears once in the result. Records without a label get
    nulls; label columns clashing with log columns get a ``_label`` suffix. The order of
    ``table`` is kept.
    """
    on = [k for k in keys if k in labels.column_names]
    if "request_id" not in on:
        raise ValueError("labels need a request_id column")
    for key in on:
        want = table.schema.field(key).type
        if not labels.schema.field(key).type.equals(want):
            labels = labels.set_column(
                labels.schema.get_field_index(key), key, labels.column(key).cast(want)
            )
    left = table.select(on).append_column("__left", pa.array(np.arange(table.num_rows)))
    right = (
        labels.select(on)
        .append_column("__right", pa.array(np.arange(labels.num_rows)))
        .group_by(on, use_threads=False)
        .aggregate([("__right", "max")])
    )
    right = right.rename_columns([n.removesuffix("_max") for n in right.column_names])
    joined = left.join(right, keys=on, join_type="left outer").sort_by("__left")
    result = table.take(joined.column("__left"))
    payload = labels.drop_columns(on).take(joined.column("__right"))
    for name, column in zip(payload.column_names, payload.columns, strict=True):
        label_name = f"{name}_label" if name in result.column_names else name
        result = result.append_column(label_name, column)
    return result
