"""The managed sidecar's one observer on the hub: comparison, drift, labels and the log.

Everything here runs on the hub's thread, never on the response path. The window closes every
report interval (checked on each hub wake-up, at least every quarter second) and whenever a
new routing table serves, so each report belongs to one generation. A record counts under the
arm its version holds in the routing table of the window it reaches the observer in (a
version holds one arm per table): a candidate's records still queued when it is promoted
count for the champion. Records of a version that table no longer routes to (retired, or
its number now holds another artifact) are left out of the report and counted in
:attr:`ManagedObserver.late`: a report has one summary per arm, and the version holding that
arm now is the one the control plane expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from sidecar.managed.compare import MAX_LABELS
from sidecar.managed.labels import Predicted, PredictionIndex
from sidecar.managed.shadow import ShadowRecord
from sidecar.managed.versions import SHADOW, LoadedVersion, RoutingTable
from sidecar.managed.window import LabelTally, Window, carries
from sidecar.metrics import LABEL_BEYOND_LIMIT, LATE_VERSION, NoManagedMetrics
from sidecar.observers import BatchRecord, RecordRun, RejectedRecord, gather
from sidecar.predlog import PredictionLogError, PredictionLogWriter
from sidecar.recording import LogErrors, run_to_prediction_batch, to_rejected_request

log = structlog.get_logger("modelplane.sidecar.managed")


class ManagedObserver:
    """Hub observer of a managed sidecar (see the module docstring)."""

    def __init__(
        self,
        name: str,
        replica: str,
        tables: Callable[[], RoutingTable | None],
        versions: Callable[[str], LoadedVersion | None],
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
        self._versions = versions
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
        self._errors = None if writer is None else LogErrors(writer)

    # -- hub interface -------------------------------------------------------------------

    def on_records(self, records: Sequence[Any]) -> None:
        """Count, index and log everything the hub handed over."""
        table = self._roll()
        # Served session batches are gathered into runs (one per version and layout), so
        # counting, drift, the label index and the log each work once per run.
        runs = [
            p
            for p in gather([r for r in records if isinstance(r, BatchRecord)])
            if isinstance(p, RecordRun)
        ]
        for run in runs:
            self._served(run)
        for record in records:
            if isinstance(record, RejectedRecord):
                self._rejected(record)
            elif isinstance(record, ShadowRecord):
                self._shadow(record, table)
        self._log(records, runs)
        plain = [r for r in records if isinstance(r, BatchRecord | RejectedRecord)]
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

    def _served(self, record: RecordRun) -> None:
        version = self._versions(record.version)
        window = self.window
        if version is None or window is None:
            return
        counts = window.counts(version)
        if counts is None:
            window.late += len(record.codes)
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
        if version.drift is not None:
            version.drift.on_runs([record])
        if counts is not None:
            counts.add_rows(rows, labels, scores)
            if version.window_drift is not None and version.source is not None and rows:
                version.window_drift.update(version.source.extract(inputs))
        self._index(record, version, labels, scores, mask)

    def _index(
        self,
        record: RecordRun,
        version: LoadedVersion,
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
            Predicted(version.arm, version.number, v, regression, tolerance)
            for v in values.tolist()
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

    def _rejected(self, record: RejectedRecord) -> None:
        version = self._versions(record.version)
        window = self.window
        if version is None or window is None:
            return
        counts = window.counts(version)
        if counts is None:
            window.late += 1
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
        theirs_version = self._versions(record.shadow_version)
        if theirs_version is None or theirs_version.number != shadow.version:
            return
        shadow.errors += record.errors
        if record.record is None:
            return
        champion = self._versions(record.champion_version)
        candidate = self._versions(record.record.version)
        if champion is None or candidate is None:
            return
        mine = (
            champion.rule.labels(record.champion_outputs),
            champion.rule.scores(record.champion_outputs),
        )
        theirs = (
            candidate.rule.labels(record.record.outputs),
            candidate.rule.scores(record.record.outputs),
        )
        shadow.add_pairs(mine, theirs, table.tolerance)

    def _log(self, records: Sequence[Any], served: list[RecordRun]) -> None:
        writer = self.writer
        errors = self._errors
        if writer is None or errors is None:
            return
        shadows = [
            r.record for r in records if isinstance(r, ShadowRecord) and r.record is not None
        ]
        appends: list[tuple[RecordRun, str]] = []
        if self._log_batches:
            appends += [(run, self._arm(run.version)) for run in served]
        appends += [(run, SHADOW) for run in gather(shadows) if isinstance(run, RecordRun)]
        for run, arm in appends:
            version = self._versions(run.version)
            names = None if version is None else version.feature_names
            try:
                writer.append(run_to_prediction_batch(run, names, arm))
            except PredictionLogError:
                self.refused += len(run.request_ids)
            except Exception as exc:
                # A run the log cannot take (its columns clash) must not cost the runs and
                # rejected requests after it.
                self.refused += len(run.request_ids)
                errors.report(exc, len(run.request_ids))
        if not self._log_batches:
            return
        for record in records:
            if isinstance(record, RejectedRecord):
                version = self._versions(record.version)
                names = None if version is None else version.feature_names
                try:
                    writer.append_rejected(
                        to_rejected_request(record, names, self._arm(record.version))
                    )
                except PredictionLogError:
                    self.refused += 1
                except Exception as exc:
                    self.refused += 1
                    errors.report(exc, 1)

    def _arm(self, label: str) -> str:
        version = self._versions(label)
        return "champion" if version is None else version.arm
