"""The managed sidecar's one observer on the hub: comparison, drift, labels and the log.

Everything here runs on the hub's thread, never on the response path. The window closes every
report interval (checked on each hub wake-up, at least every quarter second) and whenever a
new routing table serves, so each report belongs to one generation. A record counts under the
arm its version holds in the routing table of the window it reaches the observer in (a
version holds one arm per table): a candidate's records still queued when it is promoted
count for the champion. Records of a version that table no longer routes to (retired, or
its number now holds another artifact, or already released) are left out of the report and
counted in :attr:`ManagedObserver.late`: a report has one summary per arm, and the version
holding that arm now is the one the control plane expects.

Each record arrives with the version that answered it and the arm it answered as
(:class:`sidecar.managed.versions.Served`, and the versions a :class:`ShadowRecord` names), so
nothing is looked up by label here: a version may have been released while its records
waited in the hub. The prediction log and the label index take the arm a record was
answered as; so does the log's feature naming, which follows the version that answered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import structlog

from sidecar.managed.compare import MAX_LABELS
from sidecar.managed.labels import Predicted, PredictionIndex
from sidecar.managed.shadow import ShadowRecord
from sidecar.managed.versions import SHADOW, LoadedVersion, RoutingTable, Served
from sidecar.managed.window import LabelTally, Window, carries
from sidecar.metrics import LABEL_BEYOND_LIMIT, LATE_VERSION, NoManagedMetrics
from sidecar.observers import BatchRecord, RecordRun, RejectedRecord, gather
from sidecar.predlog import PredictionLogError, PredictionLogWriter
from sidecar.recording import (
    LogErrors,
    output_shapes,
    run_to_prediction_batch,
    to_rejected_request,
)

log = structlog.get_logger("modelplane.sidecar.managed")

#: Whose records a run holds: a version, or a version with the arm it answered as.
Owner = TypeVar("Owner")


class ManagedObserver:
    """Hub observer of a managed sidecar (see the module docstring)."""

    def __init__(
        self,
        name: str,
        replica: str,
        tables: Callable[[], RoutingTable | None],
        index: PredictionIndex,
        emit: Callable[[Any], None],
        writer: PredictionLogWriter | None = None,
        log_batches: bool = True,
        extra: Sequence[Any] = (),
        dropped: Callable[[], int] = lambda: 0,
        metrics: NoManagedMetrics | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics if metrics is not None else NoManagedMetrics()
        self.replica = replica
        self._tables = tables
        self.index = index
        self._emit = emit
        self.writer = writer
        #: False in ``sync`` durability, where request threads log their own records.
        self._log_batches = log_batches
        self._extra = list(extra)
        self._dropped = dropped
        self.labels = LabelTally()
        self.window: Window | None = None
        #: Records the log refused after it failed, or that it could not take at all
        #: (counted as log errors).
        self.refused = 0
        #: Requests left out of the reports: answered by a version that the routing table of
        #: the window they reached the observer in no longer routes to (see the docstring).
        self.late = 0
        #: Rows whose predicted label the reports left out (see
        #: :meth:`sidecar.managed.compare.ArmCounts.top_labels`).
        self.labels_left_out = 0
        self._warned_labels = False
        self._warned_drift = False
        self._errors = None if writer is None else LogErrors(writer)

    # -- hub interface -------------------------------------------------------------------

    def on_records(self, records: Sequence[Any]) -> None:
        """Count, index and log everything the hub handed over."""
        table = self._roll()
        batches: list[tuple[BatchRecord, tuple[LoadedVersion, str]]] = []
        rejected: list[tuple[RejectedRecord, LoadedVersion, str]] = []
        shadows: list[ShadowRecord] = []
        plain: list[BatchRecord | RejectedRecord] = []
        for item in records:
            if isinstance(item, Served):
                plain.append(item.record)
                if isinstance(item.record, RejectedRecord):
                    rejected.append((item.record, item.version, item.arm))
                else:
                    batches.append((item.record, (item.version, item.arm)))
            elif isinstance(item, ShadowRecord):
                shadows.append(item)
            elif isinstance(item, BatchRecord | RejectedRecord):
                # Not published through a version: nothing says which answered.
                self._left_out(len(item.request_ids) if isinstance(item, BatchRecord) else 1)
                plain.append(item)
        # Served session batches are gathered into runs (one per version, arm and layout),
        # so counting, drift, the label index and the log each work once per run.
        served = [(run, owner[0], owner[1]) for run, owner in _runs_by_owner(batches)]
        for run, version, arm in served:
            self._served(run, version, arm)
        for record, version, _ in rejected:
            self._rejected(record, version)
        for shadow in shadows:
            self._shadow(shadow, table)
        self._log(served, rejected, shadows)
        for observer in self._extra:
            try:
                bulk = getattr(observer, "on_records", None)
                if bulk is not None:
                    bulk(plain)
                else:
                    for r in plain:
                        (observer.on_batch if isinstance(r, BatchRecord) else observer.on_rejected)(
                            r
                        )
            except Exception:
                log.exception("observer failed", observer=type(observer).__name__)

    def on_batch(self, record: BatchRecord) -> None:
        """One session batch."""
        self.on_records([record])

    def on_rejected(self, record: RejectedRecord) -> None:
        """One refused request."""
        self.on_records([record])

    def on_tick(self) -> None:
        """Close the window when its interval is up; let drift windows close by time."""
        self._roll()
        table = self._tables()
        if table is not None:
            for version in table.by_label.values():
                if version.drift is not None:
                    version.drift.on_tick()
        for observer in self._extra:
            tick = getattr(observer, "on_tick", None)
            if tick is not None:
                tick()

    def add_labeled(self, arm: str, version: int, labeled: int, right: int) -> None:
        """Joined labels for the open window (``IngestLabels`` threads)."""
        self.labels.add_labeled(arm, version, labeled, right)

    def reportable(self, arm: str, version: int) -> bool:
        """Whether the coming reports can carry labels of ``version`` answering as ``arm``
        (``IngestLabels`` threads)."""
        table = self._tables()
        return table is not None and carries(table, arm, version)

    def flush(self) -> None:
        """Close the open window now (at shutdown)."""
        if self.window is not None:
            self._close(self.window)
            self.window = None

    # -- internals -----------------------------------------------------------------------

    def _roll(self) -> RoutingTable | None:
        table = self._tables()
        window = self.window
        if window is not None and (window.table is not table or window.due()):
            self._close(window)
            window = self.window = None
        if window is None and table is not None:
            self.window = Window(table)
        return table

    def _close(self, window: Window) -> None:
        try:
            fresh, carried = self.labels.take()
            request, left = window.close(self.name, self.replica, self._dropped(), fresh, carried)
            self.labels.carry(left)
            self._emit(request)
        except Exception:
            log.exception("could not close the report window")
        if window.labels_left_out:
            self.labels_left_out += window.labels_left_out
            self._metrics.left_out(LABEL_BEYOND_LIMIT, window.labels_left_out)
            (log.debug if self._warned_labels else log.warning)(
                "predicted labels left out of the report: an arm reports its "
                f"{MAX_LABELS} most frequent labels",
                deployment=self.name,
                rows=window.labels_left_out,
                total=self.labels_left_out,
            )
            self._warned_labels = True
        if window.late:
            self.late += window.late
            self._metrics.left_out(LATE_VERSION, window.late)
            log.info(
                "requests of versions no longer routed to are left out of the report",
                deployment=self.name,
                generation=window.table.generation,
                requests=window.late,
                total=self.late,
            )

    def _left_out(self, requests: int) -> None:
        """Count ``requests`` in :attr:`late` (with the open window's, when one is open)."""
        if self.window is not None:
            self.window.late += requests
        else:
            self.late += requests
            self._metrics.left_out(LATE_VERSION, requests)

    def _served(self, record: RecordRun, version: LoadedVersion, arm: str) -> None:
        window = self.window
        counts = None if window is None else window.counts(version)
        if counts is None:
            self._left_out(len(record.codes))
        else:
            counts.add_requests(record.latencies_s, record.codes, record.status)
        mask = record.ok_rows()
        outputs = record.outputs
        inputs = record.inputs
        if mask is not None:
            outputs = {n: a[mask] for n, a in outputs.items() if a.ndim and len(a) == len(mask)}
            inputs = {n: a[mask] for n, a in inputs.items() if a.ndim and len(a) == len(mask)}
        rows = sum(c for c, s in zip(record.row_counts, record.status, strict=True) if s == "OK")
        labels = version.rule.labels(outputs)
        scores = version.rule.scores(outputs)
        if labels is not None and len(labels) != rows:
            labels = None
        if scores is not None and len(scores) != rows:
            scores = None
        if version.drift is not None and not version.released:
            self._drift(lambda: version.drift.on_runs([record]))  # type: ignore[union-attr]
        if counts is not None:
            counts.add_rows(rows, labels, scores)
            if version.window_drift is not None and version.source is not None and rows:
                monitor, source = version.window_drift, version.source
                self._drift(lambda: monitor.update(source.extract(inputs)))
        self._index(record, version, arm, labels, scores, mask)

    def _drift(self, update: Callable[[], object]) -> None:
        """Run a drift update; one that fails is logged and leaves the request counts, the
        label index and the prediction log of the run untouched."""
        try:
            update()
        except Exception:
            (log.debug if self._warned_drift else log.exception)("drift update failed")
            self._warned_drift = True

    def _index(
        self,
        record: RecordRun,
        version: LoadedVersion,
        arm: str,
        labels: np.ndarray[Any, Any] | None,
        scores: np.ndarray[Any, Any] | None,
        mask: np.ndarray[Any, Any] | None,
    ) -> None:
        if self.index.capacity <= 0:
            return
        regression = version.rule.regression
        values = scores if regression else labels
        if values is None:
            return
        table = self._tables()
        tolerance = 0.1 if table is None else table.tolerance
        predicted = [
            Predicted(arm, version.number, v, regression, tolerance) for v in values.tolist()
        ]
        if mask is None:
            self.index.add(record.request_ids, record.row_counts, predicted)
        else:
            ok = [
                (rid, n)
                for rid, n, s in zip(
                    record.request_ids, record.row_counts, record.status, strict=True
                )
                if s == "OK"
            ]
            self.index.add([r for r, _ in ok], [n for _, n in ok], predicted)

    def _rejected(self, record: RejectedRecord, version: LoadedVersion) -> None:
        window = self.window
        counts = None if window is None else window.counts(version)
        if counts is None:
            self._left_out(1)
            return
        latency = record.latency_s or 0.0
        counts.add_requests([latency], [record.code], [record.reason])

    def _shadow(self, record: ShadowRecord, table: RoutingTable | None) -> None:
        window = self.window
        if window is None or window.shadow is None or table is None:
            return
        shadow = window.shadow
        # Copies of a version that no longer shadows (queued before the table changed)
        # belong to no summary of this window.
        candidate = window.table.shadow
        if candidate is None or record.shadow is not candidate:
            return
        shadow.errors += record.errors
        if record.record is None:  # failed copies: counted, no answers to compare
            return
        shadow.add_latencies(record.record)
        champion = record.champion
        mine = (
            champion.rule.labels(record.champion_outputs),
            champion.rule.scores(record.champion_outputs),
        )
        theirs = (
            candidate.rule.labels(record.record.outputs),
            candidate.rule.scores(record.record.outputs),
        )
        shadow.add_pairs(mine, theirs, table.tolerance)

    def _log(
        self,
        served: list[tuple[RecordRun, LoadedVersion, str]],
        rejected: list[tuple[RejectedRecord, LoadedVersion, str]],
        shadows: list[ShadowRecord],
    ) -> None:
        writer = self.writer
        errors = self._errors
        if writer is None or errors is None:
            return
        appends: list[tuple[RecordRun, LoadedVersion, str]] = []
        if self._log_batches:
            appends += served
        copies = [(r.record, r.shadow) for r in shadows if r.record is not None]
        appends += [(run, version, SHADOW) for run, version in _runs_by_owner(copies)]
        # Refused requests are logged here in async durability only (in sync durability the
        # request threads log their own); failed shadow copies always, like the copies that ran.
        refusals = list(rejected) if self._log_batches else []
        refusals += [(r.failed, r.shadow, SHADOW) for r in shadows if r.failed is not None]
        for run, version, arm in appends:
            try:
                writer.append(
                    run_to_prediction_batch(
                        run, version.feature_names, arm, output_shapes(version.model.signature)
                    )
                )
            except PredictionLogError:
                self.refused += len(run.request_ids)
            except Exception as exc:
                # A run the log cannot take (its columns clash) must not cost the runs and
                # rejected requests after it.
                self.refused += len(run.request_ids)
                errors.report(exc, len(run.request_ids))
        for record, version, arm in refusals:
            try:
                writer.append_rejected(to_rejected_request(record, version.feature_names, arm))
            except PredictionLogError:
                self.refused += 1
            except Exception as exc:
                self.refused += 1
                errors.report(exc, 1)


def _runs_by_owner(batches: list[tuple[BatchRecord, Owner]]) -> list[tuple[RecordRun, Owner]]:
    """Consecutive session batches of one owner (a version, with the arm it answered as)
    gathered into runs, each with its owner: runs never mix versions, not even two that share
    a label (a number whose artifact was replaced)."""
    out: list[tuple[RecordRun, Owner]] = []
    start = 0
    for end in range(1, len(batches) + 1):
        if end == len(batches) or batches[end][1] != batches[start][1]:
            owner = batches[start][1]
            part = [record for record, _ in batches[start:end]]
            out += [(run, owner) for run in gather(part) if isinstance(run, RecordRun)]
            start = end
    return out
