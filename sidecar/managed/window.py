"""The open report window: per-arm counts, shadow pairs, drift; closed into a report.

Only the observer thread touches a window. Labels joined by ``IngestLabels`` (request
threads) gather in a :class:`LabelTally` that the closing window takes, by arm and version
number, so that a window reports them whether or not its routing table still holds the
version; only when another version holds the arm in its report (one summary per arm) are
they left to the next window.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from modelplane.v1 import deployments_pb2 as dpb
from sidecar.drift import WindowState
from sidecar.managed.compare import ArmCounts, ShadowCounts
from sidecar.managed.versions import CANDIDATE, CHAMPION, LoadedVersion, RoutingTable

log = structlog.get_logger("modelplane.sidecar.managed")

#: How much of a load error a report carries.
MAX_ERROR_CHARS = 500


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def drift_summary(version: LoadedVersion, window: WindowState) -> Any:
    """Bin counts of ``window`` over ``version``'s baseline bins (profile order)."""
    assert version.window_drift is not None
    grid = version.window_drift.grid
    features: dict[str, Any] = {}
    for i, ngrid in enumerate(grid.numeric):
        cells = window.cells[grid.cell_offsets[i] : grid.cell_offsets[i + 1]]
        bins = np.bincount(
            ngrid.cell_to_bin, weights=cells, minlength=len(ngrid.feature.edges) + 1
        ).astype(np.int64)
        out = int(cells.sum()) if len(ngrid.points) == 0 else int(cells[0] + cells[-1])
        features[ngrid.feature.name] = dpb.FeatureCounts(
            name=ngrid.feature.name,
            counts=bins.tolist(),
            out_of_range=out,
            missing=int(window.missing[i]),
        )
    for i, cfeature in enumerate(grid.categorical):
        features[cfeature.name] = dpb.FeatureCounts(
            name=cfeature.name,
            counts=window.categories[i].tolist(),
            out_of_range=int(sum(window.unseen[i].values())),
            missing=int(window.categorical_missing[i]),
        )
    return dpb.DriftSummary(
        baseline_sha256=version.baseline_sha256,
        rows=window.rows,
        features=[features[n] for n in grid.profile.feature_names],
    )


def holder(table: RoutingTable, version: LoadedVersion) -> str | None:
    """The arm ``version`` answers as in ``table``: champion or candidate; None when the table
    does not route to it (a retired version, or one whose number now has another artifact)."""
    if version is table.champion:
        return CHAMPION
    if version is table.candidate:
        return CANDIDATE
    return None


def carries(table: RoutingTable, arm: str, version: int) -> bool:
    """Whether reports of ``table``'s windows can carry labels of ``version`` answering as
    ``arm``: no other version answers as ``arm`` there (a report holds one summary per arm)."""
    holder = table.champion if arm == CHAMPION else table.candidate
    return holder is None or holder.number == version


class LabelTally:
    """Labels joined since the last window closed, by (arm, version number)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[int]] = {}
        self._carried: dict[tuple[str, int], list[int]] = {}
        self._lock = threading.Lock()

    def add_labeled(self, arm: str, version: int, labeled: int, right: int) -> None:
        """Count joined labels (any thread)."""
        with self._lock:
            entry = self._counts.setdefault((arm, version), [0, 0])
            entry[0] += labeled
            entry[1] += right

    def take(self) -> tuple[dict[tuple[str, int], list[int]], dict[tuple[str, int], list[int]]]:
        """The counts so far, and those a closed window left to this one; starting over."""
        with self._lock:
            counts, self._counts = self._counts, {}
            carried, self._carried = self._carried, {}
        return counts, carried

    def carry(self, counts: dict[tuple[str, int], list[int]]) -> None:
        """Counts a window could not report, for the next one."""
        with self._lock:
            self._carried = counts


class Window:
    """Counts of one report window of one routing table."""

    def __init__(self, table: RoutingTable, start: float | None = None) -> None:
        self.table = table
        self.start = time.time() if start is None else start
        self.opened = time.monotonic()
        self.arms: dict[tuple[str, int], ArmCounts] = {}
        #: Requests of versions this window's table does not route to, left out of its report.
        self.late = 0
        #: Rows whose predicted label the report left out (more labels than an arm carries).
        self.labels_left_out = 0
        shadow = table.shadow
        self.shadow = (
            None if shadow is None else ShadowCounts(shadow.number, table.champion.rule.layout)
        )

    def counts(self, version: LoadedVersion) -> ArmCounts | None:
        """The counts of ``version`` under the arm it holds in this window's table; None for a
        version the table does not route to (see :func:`holder`): the report has one summary
        per arm, and records of a version retired or replaced while they waited for the
        observer must not add a second one (the caller counts them in :attr:`late`)."""
        arm = holder(self.table, version)
        return None if arm is None else self.arm(version, arm)

    def arm(self, version: LoadedVersion, arm: str) -> ArmCounts:
        """The counts of ``version`` answering as ``arm``."""
        key = (arm, version.number)
        counts = self.arms.get(key)
        if counts is None:
            counts = self.arms[key] = ArmCounts(arm, version.number, version.rule.layout)
        return counts

    def due(self) -> bool:
        """Whether the report interval has passed."""
        return time.monotonic() - self.opened >= self.table.report_interval

    def _labeled(self, arm: str, number: int) -> ArmCounts | None:
        """The counts that labels of version ``number`` answering as ``arm`` go to; None when
        another version holds that arm in this window's report."""
        counts = self.arms.get((arm, number))
        if counts is not None:
            return counts
        if any(held == arm for held, _ in self.arms):
            return None
        version = next((v for v in self.table.by_label.values() if v.number == number), None)
        layout = None if version is None else version.rule.layout
        counts = self.arms[(arm, number)] = ArmCounts(arm, number, layout)
        return counts

    def close(
        self,
        name: str,
        replica: str,
        dropped: int,
        labels: dict[tuple[str, int], list[int]],
        carried: dict[tuple[str, int], list[int]] | None = None,
    ) -> tuple[Any, dict[tuple[str, int], list[int]]]:
        """The ``ReportWindowRequest`` of this window (without its sequence number), and the
        labels it could not carry, for the next window. ``labels``: joined labels by (arm,
        version number) -> [labeled, correct]; ``carried``: those the previous window left,
        dropped (and logged) when this one cannot carry them either."""
        table = self.table
        end = time.time()
        self.arm(table.champion, CHAMPION)
        if table.candidate is not None and table.splitter.splits:
            self.arm(table.candidate, CANDIDATE)
        left: dict[tuple[str, int], list[int]] = {}
        for source, again in ((labels, False), (carried or {}, True)):
            for (arm, number), (labeled, right) in source.items():
                counts = self._labeled(arm, number)
                if counts is None and not again:
                    left[(arm, number)] = [labeled, right]
                elif counts is None:
                    log.warning(
                        "labels of a version no longer reported are left out",
                        arm=arm,
                        version=number,
                        labeled=labeled,
                    )
                else:
                    counts.labeled += labeled
                    counts.correct += right
        summaries = []
        held = {CHAMPION: table.champion.number}
        if table.candidate is not None:
            held[CANDIDATE] = table.candidate.number
        reported: set[str] = set()
        # The table's own versions first: should two versions ever hold one arm here, the
        # one the table routes to is reported (the control plane refuses a report with two).
        ordered = sorted(self.arms.items(), key=lambda kv: held.get(kv[0][0]) != kv[0][1])
        for (arm, number), counts in ordered:
            if arm in reported:
                log.error(
                    "left a second summary of an arm out of the report",
                    arm=arm,
                    version=number,
                    requests=counts.requests,
                )
                self.late += counts.requests
                continue
            reported.add(arm)
            summary = counts.to_proto()
            self.labels_left_out += counts.labels_left_out
            version = next((v for v in table.by_label.values() if v.number == number), None)
            if version is not None and version.window_drift is not None:
                window = version.take_drift()
                if window is not None:
                    summary.drift.CopyFrom(drift_summary(version, window))
            summaries.append(summary)
        request = dpb.ReportWindowRequest(
            name=f"deployments/{name}",
            replica=replica,
            generation=table.generation,
            rollout_id=table.report_rollout_id,
            start_time=_stamp(self.start),
            end_time=_stamp(end),
            arms=summaries,
            unloaded_versions=[
                dpb.UnloadedVersion(version=number, error=error[:MAX_ERROR_CHARS])
                for number, error in sorted(table.unloaded.items())
            ],
        )
        if table.create_time is not None:
            request.deployment_create_time.CopyFrom(table.create_time)
        if self.shadow is not None:
            self.shadow.dropped += dropped
            request.shadow.CopyFrom(self.shadow.to_proto())
        return request, left
