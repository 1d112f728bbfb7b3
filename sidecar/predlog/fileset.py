"""The files a prediction log writer has open: one per family of mergeable schemas.

Records of one model version share a schema; a rejected request or another live version may
add columns (the schemas merge: a file with the merged schema replaces the open one), change
a type that widens (float32 to float64: the wider file takes both, cast on write), or clash
(a scalar output against a list output: no file can take both). Clashing schemas each keep
their own open file, so two live versions whose outputs differ write two files side by side
instead of closing one and opening the other on every round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from sidecar.predlog.files import LogFile
from sidecar.predlog.metrics import PredictionLogMetrics
from sidecar.predlog.schemas import combine, conform, covers, unify

#: Open files beyond this close, least recently written first (each holds a descriptor).
MAX_OPEN_FILES = 8


def merge_groups(batches: list[pa.RecordBatch]) -> list[tuple[pa.Schema, list[pa.RecordBatch]]]:
    """``batches`` grouped so that each group's schemas merge, with the merged schema."""
    groups: list[tuple[pa.Schema, list[pa.RecordBatch]]] = []
    for batch in batches:
        for i, (schema, members) in enumerate(groups):
            merged = unify([schema, batch.schema])
            if merged is not None:
                groups[i] = (merged, [*members, batch])
                break
        else:
            groups.append((batch.schema, [batch]))
    return groups


class OpenFiles:
    """Routes batches to open :class:`LogFile` s, opening, widening and closing them."""

    def __init__(
        self,
        directory: Path,
        options: pa.ipc.IpcWriteOptions,
        sync: bool,
        metrics: PredictionLogMetrics,
        limit: int = MAX_OPEN_FILES,
    ) -> None:
        self.directory = directory
        self._options = options
        self._sync = sync
        self._metrics = metrics
        self._limit = limit
        self._files: list[LogFile] = []  # least recently written first
        self._seq = 0

    def __iter__(self) -> Iterator[LogFile]:
        return iter(list(self._files))

    def __len__(self) -> int:
        return len(self._files)

    @property
    def latest(self) -> LogFile | None:
        """The file written most recently."""
        return self._files[-1] if self._files else None

    def write(self, batches: list[pa.RecordBatch]) -> None:
        """Append ``batches`` (one round), combined into one batch per file they go to (more
        only where a column would pass Arrow's 2 GiB per array)."""
        for schema, members in merge_groups(batches):
            self._write_group(members, schema)

    def _write_group(self, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
        target = next((f for f in self._files if covers(f.schema, schema)), None)
        if target is None:
            for candidate in self._files:
                merged = unify([candidate.schema, schema])
                if merged is None:
                    continue
                if merged.equals(candidate.schema):
                    target = candidate  # only narrower types: cast them to the file's
                else:
                    self.close(candidate)  # the schema grows: a new file takes over
                    schema = merged
                break
        if target is not None:
            for part in combine([conform(b, target.schema) for b in batches], target.schema):
                target.write(part)
            self._files.remove(target)
            self._files.append(target)
            return
        if len(self._files) >= self._limit:
            self.close(self._files[0])
        self._seq += 1
        first, *rest = combine([conform(b, schema) for b in batches], schema)
        created = LogFile.create(self.directory, self._seq, first, self._options, self._sync)
        for part in rest:
            created.write(part)
        self._files.append(created)
        self._metrics.files.inc()
        self._metrics.bytes.inc(created.size)

    def flush(self, durable: bool) -> None:
        """Hand what was written to the OS; with ``durable``, fsync every file not yet synced."""
        for log_file in self._files:
            if log_file.pending or (durable and log_file.unsynced):
                self._metrics.bytes.inc(log_file.flush(durable))

    def close(self, log_file: LogFile) -> None:
        """Finish one open file (on a failure, cut back to its last complete batch)."""
        self._files.remove(log_file)
        try:
            self._metrics.bytes.inc(log_file.close())
        except BaseException:
            log_file.discard()
            raise

    def replace_taken(self) -> list[tuple[LogFile, str]]:
        """Close the files something outside the writer deleted or moved (see
        :meth:`LogFile.taken`), so that the next records go to new files (in folders made
        again if they went too); returns them, each with how it was taken."""
        taken = [(f, how) for f in self._files if (how := f.taken()) is not None]
        for log_file, _ in taken:
            self._files.remove(log_file)
            try:
                log_file.close()  # a moved file ends well where it went
            except OSError:
                log_file.discard()
            self._metrics.files_lost.inc()
        return taken

    def close_where(self, due: Callable[[LogFile], bool]) -> bool:
        """Finish the files for which ``due`` holds; returns whether any was."""
        closing = [f for f in self._files if due(f)]
        for log_file in closing:
            self.close(log_file)
        return bool(closing)

    def close_all(self) -> None:
        """Finish every open file."""
        self.close_where(lambda _: True)

    def abandon_all(self) -> list[Path]:
        """Drop every open file after a failure, each cut back to its last complete batch
        (:meth:`LogFile.discard`); returns their paths."""
        dropped, self._files = self._files, []
        for log_file in dropped:
            log_file.discard()
        return [f.path for f in dropped]
