"""Ground-truth labels: joined with recent predictions, counted per arm, logged to Arrow.

:class:`PredictionIndex` remembers the most recent predicted rows (``request_id, row`` ->
arm, version, predicted label or value), filled from the observer thread and bounded by a row
count (the least recently predicted are forgotten first). It keys rows by a 16-byte digest of
the request id, not the id itself, so its memory is bounded by the row count whatever the
length of the ids.

:class:`LabelIngestor` answers ``IngestLabels``. It checks every label first, against the
prediction it joins too (a classifier's label is a class: ``class_label``, or a ``target``
that is a whole number; a label that joins nothing, see below, has no version to check
against), so that nothing of a call is counted or written when one label is invalid; then it
joins each with the index - in one step with the check, so that the prediction a label is
checked against, logged with and counted for is one and the same even when its row is
predicted again meanwhile - adds ``labeled``/``correct`` to the open window
of the arm that answered, and appends every label to the label log: ``labels-*.arrows`` Arrow
IPC stream files in the prediction log's directory, written with the prediction log's file
helpers. A sidecar without a prediction log (no ``--log-dir``) keeps no label log: it joins
and counts labels, and answers that it wrote none (``accepted`` 0).

A label joins only predictions that the coming window reports can carry (a report holds one
summary per arm): those of a version that still answers as the same arm in the routing table,
or whose arm no other version holds now. The rows of a version whose arm another version now
holds - the champion after a promotion, a candidate replaced by the next one - are unmatched
(``matched`` false in the answer and the log; the prediction log still has them). A candidate
after a rollback (or a promotion) leaves its arm empty, so the rows it really answered still
join and are reported under its arm and version: they are evidence about it all the same.

A predicted row counts toward ``labeled``/``correct`` once: the first label joined with it is
counted, and any later label for the same (request id, row) - a retried ``IngestLabels``, or
a correction - is matched and written to the label log but not counted again. The first one
stays in the tally because windows are reported as they close, so an earlier count may
already be with the control plane and cannot be taken back; the label log keeps every label
(with its time) for anyone who wants the latest.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog

from modelplane.errors import InvalidArgument, ResourceExhausted, Unavailable
from sidecar.managed.compare import correct
from sidecar.predlog.files import LABELS_PREFIX, LogFile

log = structlog.get_logger("modelplane.sidecar.labels")

MAX_LABELS_PER_CALL = 100_000
ROTATE_BYTES = 64 << 20
#: The prediction log's default ``--log-rotate-age``.
ROTATE_AGE_S = 3600.0

LABEL_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("row", pa.int64()),
        ("class_label", pa.int64()),
        ("target", pa.float64()),
        ("matched", pa.bool_()),
        ("arm", pa.string()),
        ("model_version", pa.string()),
        ("correct", pa.bool_()),
    ]
)


@dataclass(slots=True, frozen=True)
class Predicted:
    """What one served row predicted."""

    arm: str
    #: The version's number.
    version: int
    value: float | int
    regression: bool
    tolerance: float
    #: Whether a label joined with this row has been counted.
    labeled: bool = False


@dataclass(frozen=True, slots=True)
class Joined:
    """The prediction a label joined (on this worker or another), as the label log records
    it: the arm and version that answered its row, and whether the label agrees."""

    arm: str
    version: int
    correct: bool


def _digest(request_id: str) -> bytes:
    """The fixed-size key of a request id in the index."""
    return hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class PredictionIndex:
    """The most recently predicted ``capacity`` rows, by (request id, row)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[tuple[bytes, int], Predicted] = OrderedDict()
        self._lock = threading.Lock()

    def add(
        self, request_ids: list[str], row_counts: list[int], predicted: list[Predicted]
    ) -> None:
        """Remember rows: ``predicted`` holds one entry per row, requests in order. A row
        predicted again (a reused request id) replaces the old entry and becomes the newest."""
        if self.capacity <= 0:
            return
        rows = self._rows
        keys = [_digest(rid) if rid else b"" for rid in request_ids]
        with self._lock:
            k = 0
            for key, count in zip(keys, row_counts, strict=True):
                if key:
                    for row in range(count):
                        rows[(key, row)] = predicted[k + row]
                        rows.move_to_end((key, row))
                k += count
            while len(rows) > self.capacity:
                rows.popitem(last=False)

    def get(self, request_id: str, row: int) -> Predicted | None:
        """The prediction of that row, if still remembered."""
        key = (_digest(request_id), row)
        with self._lock:
            return self._rows.get(key)

    def join(
        self,
        keys: list[tuple[str, int]],
        joins: Callable[[int, Predicted], bool],
        check: Callable[[list[Predicted | None]], None],
        *,
        mark: bool = True,
    ) -> tuple[list[Predicted | None], list[Predicted | None]]:
        """Join labels of ``keys`` (request id, row) with their rows, in one step that no
        new prediction comes between. Returns, per label, the prediction of its row if
        remembered and ``joins(i, prediction)`` for the label's index (None otherwise), and
        the row's entry marked labeled
        when the label is the first for it (None otherwise: give it to :meth:`unjoin` to
        undo). ``check(hits)`` runs first and may raise: nothing is marked then; without
        ``mark`` nothing is marked either (the labels are only checked).
        """
        digests = [(_digest(rid), row) for rid, row in keys]
        rows = self._rows
        with self._lock:
            hits: list[Predicted | None] = []
            for i, key in enumerate(digests):
                hit = rows.get(key)
                hits.append(hit if hit is not None and joins(i, hit) else None)
            check(hits)
            if not mark:
                return hits, [None] * len(hits)
            marks: list[Predicted | None] = []
            for key, hit in zip(digests, hits, strict=True):
                marked = None
                # A row labeled twice in one call is marked by the first label only.
                if hit is not None and not hit.labeled and rows.get(key) is hit:
                    marked = rows[key] = replace(hit, labeled=True)
                marks.append(marked)
        return hits, marks

    def unjoin(
        self,
        keys: list[tuple[str, int]],
        hits: list[Predicted | None],
        marks: list[Predicted | None],
    ) -> None:
        """Undo :meth:`join`'s marks (a call that could not be logged): rows still holding
        the marked entry get their prediction back, unlabeled."""
        rows = self._rows
        with self._lock:
            for (rid, row), hit, mark in zip(keys, hits, marks, strict=True):
                key = (_digest(rid), row)
                if mark is not None and hit is not None and rows.get(key) is mark:
                    rows[key] = hit

    def __len__(self) -> int:
        return len(self._rows)


class LabelLog:
    """Appends label batches to ``labels-*.arrows`` files under ``directory``.

    A file is finished once it reaches :data:`ROTATE_BYTES` or, at the next append, once it
    is older than ``rotate_age`` seconds, so that files roll over and retention can expire
    them; retention (the prediction log's sweep) never deletes the file still open here.
    """

    def __init__(self, directory: Path, rotate_age: float = ROTATE_AGE_S) -> None:
        self.directory = directory
        self.rotate_age = rotate_age
        self._file: LogFile | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._options = pa.ipc.IpcWriteOptions()

    def append(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` durably (fsynced before returning).

        On a failure (OSError: a full disk, a file-size limit) nothing of ``batch`` stays
        behind: the open file is cut back to its last complete batch and closed, and the
        next append starts a new file.
        """
        with self._lock:
            current = self._file
            if current is not None and (
                current.size >= ROTATE_BYTES or time.monotonic() >= current.opened + self.rotate_age
            ):
                self._file = None
                try:
                    current.close()
                except OSError:
                    current.discard()
            if self._file is None:
                self._seq += 1
                self._file = LogFile.create(
                    self.directory, self._seq, batch, self._options, True, prefix=LABELS_PREFIX
                )
                return
            try:
                self._file.write(batch)
                self._file.flush(durable=True)
            except OSError:
                failed, self._file = self._file, None
                failed.discard()
                raise

    def close(self) -> None:
        """Finish the open file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class LabelIngestor:
    """``IngestLabels``: validate, join, log, count.

    ``peers`` (a :class:`~sidecar.managed.peers.WorkerPeers`, in a worker of ``--workers N``)
    joins the labels with the other workers' predictions too (see :mod:`sidecar.managed.peers`).
    """

    def __init__(
        self, index: PredictionIndex, counts: Any, log: LabelLog | None, peers: Any = None
    ) -> None:
        self.index = index
        #: Receives ``add_labeled(arm, version, labeled, correct)`` for the open window, and
        #: says whether labels of a version answering as an arm can be reported
        #: (``reportable(arm, version)``).
        self.counts = counts
        self.log = log
        self.peers = peers
        #: One call at a time joins, logs and (on a log failure) undoes its marks.
        self._lock = threading.Lock()

    def ingest(self, labels: Any) -> tuple[int, int]:
        """Take a request's labels; returns (accepted: written to the label log, none
        without one; matched: joined with a remembered prediction).

        Every label is checked, against the prediction it joins too, before anything
        happens; the call's labels are written to the label log before any is counted, so
        a call the log cannot take (UNAVAILABLE, ``LABEL_LOG_FAILED``) leaves no trace and
        can be sent again as it is. (With other workers, those count their rows before
        this one logs: see :mod:`sidecar.managed.peers`.)
        """
        _check(labels)
        keys = [(label.request_id, label.row) for label in labels]
        remote: dict[int, Joined] = {}
        if self.peers is not None:
            self._join(labels, keys, mark=False)
            self.peers.join(labels, check_only=True)
            remote = self.peers.join(labels, check_only=False)
        with self._lock:
            # Checked already when other workers took part: here a label no longer valid for
            # its row (predicted again meanwhile) joins nothing rather than refusing the call.
            hits, marks = self._join(labels, keys, mark=True, checked=self.peers is not None)
            rights = self._rights(labels, hits)
            joined = [
                Joined(hit.arm, hit.version, bool(right)) if hit is not None else remote.get(i)
                for i, (hit, right) in enumerate(zip(hits, rights, strict=True))
            ]
            if self.log is not None and len(labels):
                try:
                    self._write(labels, joined)
                except BaseException:
                    self.index.unjoin(keys, hits, marks)
                    raise
        self._count(hits, rights, marks)
        accepted = len(labels) if self.log is not None else 0
        return accepted, sum(j is not None for j in joined)

    def join_for_peer(self, labels: Any, *, check_only: bool) -> dict[int, Joined]:
        """Another worker's ``JoinLabels``: check ``labels`` against this worker's rows, or
        join them and count the first label of each row; returns what joined, by index.
        Nothing is logged here: the worker that received the labels logs them."""
        _check(labels)
        keys = [(label.request_id, label.row) for label in labels]
        with self._lock:
            hits, marks = self._join(labels, keys, mark=not check_only, checked=not check_only)
        if check_only:
            return {}
        rights = self._rights(labels, hits)
        self._count(hits, rights, marks)
        return {
            i: Joined(hit.arm, hit.version, bool(right))
            for i, (hit, right) in enumerate(zip(hits, rights, strict=True))
            if hit is not None
        }

    def _join(
        self, labels: Any, keys: list[tuple[str, int]], *, mark: bool, checked: bool = False
    ) -> tuple[list[Predicted | None], list[Predicted | None]]:
        """:meth:`PredictionIndex.join` of ``labels``: a label whose kind its row's version
        cannot take is refused (LABEL_TYPE_MISMATCH), or, once ``checked`` (by an earlier
        pass), joins nothing."""
        # A version whose arm another one now holds (a champion after a promotion, a
        # candidate replaced by the next) is in no report to come: its rows no longer
        # join, so their labels are not checked against it either. A candidate after a
        # rollback leaves its arm empty: its rows still join.
        reportable = self.counts.reportable
        if checked:
            return self.index.join(
                keys,
                lambda i, hit: reportable(hit.arm, hit.version) and _fits(labels[i], hit),
                lambda hits: None,
                mark=mark,
            )
        return self.index.join(
            keys,
            lambda i, hit: reportable(hit.arm, hit.version),
            lambda hits: _check_kinds(labels, hits),
            mark=mark,
        )

    @staticmethod
    def _rights(labels: Any, hits: list[Predicted | None]) -> list[bool | None]:
        return [
            None
            if hit is None
            else correct(hit.value, _truth(label), hit.regression, hit.tolerance)
            for label, hit in zip(labels, hits, strict=True)
        ]

    def _count(
        self,
        hits: list[Predicted | None],
        rights: list[bool | None],
        marks: list[Predicted | None],
    ) -> None:
        tally: dict[tuple[str, int], list[int]] = {}
        for hit, right, mark in zip(hits, rights, marks, strict=True):
            if hit is None or mark is None:
                continue  # unmatched, or already counted (see the module's docstring)
            entry = tally.setdefault((hit.arm, hit.version), [0, 0])
            entry[0] += 1
            entry[1] += int(bool(right))
        for (arm, version), (labeled, right_count) in tally.items():
            self.counts.add_labeled(arm, version, labeled, right_count)

    def _write(self, labels: Any, joined: list[Joined | None]) -> None:
        assert self.log is not None
        kinds = [label.WhichOneof("value") for label in labels]
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(
                    [int(time.time() * 1e6)] * len(labels), LABEL_SCHEMA.field("timestamp").type
                ),
                pa.array([label.request_id for label in labels], pa.string()),
                pa.array([label.row for label in labels], pa.int64()),
                pa.array(
                    [
                        label.class_label if kind == "class_label" else None
                        for label, kind in zip(labels, kinds, strict=True)
                    ],
                    pa.int64(),
                ),
                pa.array(
                    [
                        label.target if kind == "target" else None
                        for label, kind in zip(labels, kinds, strict=True)
                    ],
                    pa.float64(),
                ),
                pa.array([j is not None for j in joined], pa.bool_()),
                pa.array([None if j is None else j.arm for j in joined], pa.string()),
                pa.array([None if j is None else str(j.version) for j in joined], pa.string()),
                pa.array([None if j is None else j.correct for j in joined], pa.bool_()),
            ],
            schema=LABEL_SCHEMA,
        )
        try:
            self.log.append(batch)
        except OSError as exc:
            log.error(
                "label log write failed",
                directory=str(self.log.directory),
                errno=exc.errno,
                error=str(exc),
                labels=len(labels),
            )
            counted = (
                "none of these labels was logged (other workers of this sidecar may have "
                "counted theirs: a row's label is counted once however often it is sent)"
                if self.peers is not None
                else "none of these labels was logged or counted"
            )
            raise Unavailable(
                f"the label log could not be written ({exc.strerror or type(exc).__name__}); "
                f"{counted}: send them again once the sidecar's log directory can be written "
                "(the sidecar's log has the details)",
                reason="LABEL_LOG_FAILED",
            ) from None


def _truth(label: Any) -> int | float:
    return int(label.class_label) if label.WhichOneof("value") == "class_label" else label.target


def _check(labels: Any) -> None:
    if len(labels) > MAX_LABELS_PER_CALL:
        raise ResourceExhausted(
            f"{len(labels)} labels in one call; send at most {MAX_LABELS_PER_CALL} per call",
            reason="TOO_MANY_LABELS",
        )
    for i, label in enumerate(labels):
        if not label.request_id:
            raise InvalidArgument(
                f"label {i} has no request_id; give the id the prediction was answered under",
                reason="MISSING_REQUEST_ID",
                metadata={"index": str(i)},
            )
        if label.row < 0:
            raise InvalidArgument(
                f"label {i} has row {label.row}; rows count from 0",
                reason="INVALID_ROW",
                metadata={"index": str(i)},
            )
        kind = label.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(
                f"label {i} ({_where(label)}) has no value; set class_label (classifiers) or "
                "target (regression)",
                reason="MISSING_LABEL_VALUE",
                metadata={"index": str(i)},
            )
        if kind == "target" and not math.isfinite(label.target):
            raise InvalidArgument(
                f"label {i} ({_where(label)}) has the non-finite target {label.target!r}; "
                "send a finite number",
                reason="INVALID_LABEL_VALUE",
                metadata={"index": str(i)},
            )


def _fits(label: Any, hit: Predicted) -> bool:
    """A classifier's label is its class: class_label, or a target that is a whole number
    (a regression version takes either as its numeric value)."""
    return hit.regression or label.WhichOneof("value") != "target" or label.target.is_integer()


def _check_kinds(labels: Any, hits: list[Predicted | None]) -> None:
    """Refuse a label its row's version cannot take (:func:`_fits`)."""
    for i, (label, hit) in enumerate(zip(labels, hits, strict=True)):
        if hit is not None and not _fits(label, hit):
            raise InvalidArgument(
                f"label {i} ({_where(label)}) has the target {label.target!r}, but version "
                f"{hit.version}, which answered it, is a classifier: send the class as "
                "class_label",
                reason="LABEL_TYPE_MISMATCH",
                metadata={"index": str(i)},
            )


def _where(label: Any) -> str:
    """The request id (cut short) and row of ``label``, for messages."""
    rid = label.request_id
    shown = repr(rid) if len(rid) <= 80 else f"{rid[:80]!r}..."
    return f"request {shown}, row {label.row}"
