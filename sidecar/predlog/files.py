"""Log files on disk: names that sort by time, atomic creation, retention, listing.

A file is ``DIR/YYYY-MM-DD/YYYYMMDDTHHMMSS.ffffffZ-p<pid>-<seq>.arrows`` (UTC time of
creation), so sorting relative paths sorts files by time. ``<pid>`` is the serving process's
id (with ``--workers N``, the worker's), also when its observer process writes the log for it
(:mod:`sidecar.observer_process` calls :func:`name_files_for`): a serving process that
offloads its log writes no log files itself and has one observer process, so no two
processes write under one pid.

A new file is first written under a hidden ``.<name>.tmp`` name, holding its schema and first
batch, and only then renamed: every ``.arrows`` file, even one killed mid-write, starts with a
readable schema and batch.

A writer holds an exclusive ``flock`` on each file it has open, and retention never deletes a
locked file: the label log's files and other processes' files share the directory, and one
of them may be open, idle and older than the retention.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pyarrow as pa

SUFFIX = ".arrows"
#: Arrow's end-of-stream mark (a continuation marker and a zero length).
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
#: Name prefix of the label log's files, which share the directory but not the schema.
LABELS_PREFIX = "labels-"
_TMP_SUFFIX = ".tmp"
_STALE_TMP_S = 3600.0
#: The process id new files' names carry; None: this process's.
_name_pid: int | None = None


def name_files_for(pid: int) -> None:
    """Name the files this process creates from now on after process ``pid`` (the worker an
    observer process writes the log for), instead of after this process. Only for a process
    writing the log in place of ``pid``, which then writes no log files of its own."""
    global _name_pid
    _name_pid = pid


def list_log_files(directory: Path, labels: bool = False) -> list[Path]:
    """Every prediction ``.arrows`` file under ``directory``, at any depth (a sidecar's log
    dir holds date folders; a parent of several replicas' log dirs holds theirs), sorted by
    path relative to ``directory``: oldest first within each folder, one log dir after
    another. Hidden files and folders are skipped, symbolic links to folders not followed.
    ``labels`` lists the label log's files instead."""
    found: list[Path] = []
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [
            Path(folder, name)
            for name in names
            if name.endswith(SUFFIX)
            and not name.startswith(".")
            and name.startswith(LABELS_PREFIX) == labels
        ]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(fh: IO[bytes]) -> None:
    fh.flush()
    if hasattr(os, "fdatasync"):
        os.fdatasync(fh.fileno())
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fh.fileno())


class LogFile:
    """One open ``.arrows`` stream: schema fixed, batches appended, closed with an EOS mark."""

    def __init__(
        self, path: Path, fh: IO[bytes], writer: pa.ipc.RecordBatchStreamWriter, schema: pa.Schema
    ) -> None:
        self.path = path
        self.schema = schema
        self.opened = time.monotonic()
        self._fh = fh
        self._writer = writer
        self.size = fh.tell()
        #: Records (rows) written to the file.
        self.records = 0
        #: Written since the last flush; written since the last fsync.
        self.pending = False
        self.unsynced = False
        opened = os.fstat(fh.fileno())
        self._identity = (opened.st_dev, opened.st_ino)

    @classmethod
    def create(
        cls,
        directory: Path,
        seq: int,
        first: pa.RecordBatch,
        options: pa.ipc.IpcWriteOptions,
        durable: bool,
        prefix: str = "",
    ) -> LogFile:
        """A new file holding ``first``, published under its final name only once written
        (``prefix`` starts the name: :data:`LABELS_PREFIX` for the label log)."""
        now = datetime.now(UTC)
        folder = directory / now.strftime("%Y-%m-%d")
        new_folder = not folder.is_dir()
        pid = os.getpid() if _name_pid is None else _name_pid
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{prefix}{now.strftime('%Y%m%dT%H%M%S.%f')}Z-p{pid}-{seq:06d}{SUFFIX}"
        final = folder / name
        tmp = folder / f".{name}{_TMP_SUFFIX}"
        fh = open(tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - owned by the LogFile
        try:
            # Held until the file is closed: retention skips files a writer has open.
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            writer = pa.ipc.new_stream(fh, first.schema, options=options)
            writer.write_batch(first)
            if durable:
                _sync(fh)
            else:
                fh.flush()
            os.rename(tmp, final)
            if durable:
                _fsync_dir(folder)
                if new_folder:
                    _fsync_dir(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        created = cls(final, fh, writer, first.schema)
        created.records = first.num_rows
        created.unsynced = not durable
        return created

    def write(self, batch: pa.RecordBatch) -> None:
        """Append one batch (buffered until :meth:`flush`)."""
        self._writer.write_batch(batch)
        self.records += batch.num_rows
        self.pending = True

    def taken(self) -> str | None:
        """Whether something outside the writer took the file away: ``"deleted"`` (its last
        name removed: a clean-up, ``rm -rf`` of the log dir), ``"moved"`` (renamed, or its
        name now another file's: a log shipper that moves files it takes), or None while
        :attr:`path` still names it (also when that cannot be told: a folder made
        unreadable)."""
        try:
            named = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:
            return None
        else:
            if (named.st_dev, named.st_ino) == self._identity:
                return None
        return "moved" if os.fstat(self._fh.fileno()).st_nlink else "deleted"

    def flush(self, durable: bool) -> int:
        """Hand buffered bytes to the OS (and fsync when ``durable``); returns bytes added."""
        if durable:
            _sync(self._fh)
        else:
            self._fh.flush()
        self.unsynced = not durable and (self.unsynced or self.pending)
        self.pending = False
        before, self.size = self.size, self._fh.tell()
        return self.size - before

    def close(self) -> int:
        """Write the end-of-stream mark, fsync and close; returns bytes added."""
        self._writer.close()
        added = self.flush(durable=True)
        self._fh.close()
        return added

    def discard(self) -> None:
        """After a failed write: cut the file back to what the last flush wrote (its last
        complete batch), end it there with the end-of-stream mark where the disk takes those
        8 bytes, drop whatever is still buffered, and close it. Nothing of the failed write
        reaches the file later, and any Arrow reader reads every batch before it."""
        if self._fh.closed:
            return
        fd = self._fh.fileno()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self.size)
            if os.pwrite(fd, EOS, self.size) < len(EOS):
                os.ftruncate(fd, self.size)  # a partial mark would read as a torn message
        # Closing the buffered handle would try to write what it still holds: point its
        # descriptor at /dev/null first (this also closes the file and releases its lock).
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        with contextlib.suppress(Exception):
            self._fh.close()


def _unlink_unless_open(path: Path) -> bool:
    """Delete ``path`` unless a writer holds its lock; returns whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


def sweep(directory: Path, retention: float | None, keep: Collection[Path] | None = None) -> int:
    """Delete log files last written before ``retention`` seconds ago; returns how many.

    Also removes stale hidden temporaries and emptied date folders. ``keep`` (the files being
    written) and any file another writer has open (locked) are never touched, whatever its
    age: an idle label log may keep its file open longer than the retention.
    """
    now = time.time()
    deleted = 0
    keep = keep or ()
    kept_folders = {path.parent for path in keep}
    for folder in [directory, *(p for p in directory.iterdir() if p.is_dir())]:
        for path in folder.iterdir():
            if not path.is_file() or path in keep:
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            stale_tmp = path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)
            expired = retention is not None and path.suffix == SUFFIX and age > retention
            if expired and _unlink_unless_open(path):
                deleted += 1
            elif stale_tmp and age > _STALE_TMP_S:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if folder != directory and folder not in kept_folders:
            # Recent folders stay: another writer may be about to create a file in them.
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > _STALE_TMP_S:
                    folder.rmdir()  # only succeeds when empty
    return deleted
