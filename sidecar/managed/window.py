"""The open report window: per-arm counts, shadow pairs, drift; closed into a report.

Only the observer thread touches a window. Labels joined by ``IngestLabels`` (request
threads) gather in a :class:`LabelTally` that the closing window takes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from modelplane.v1 import deployments_pb2 as dpb
from sidecar.drift import WindowState
from sidecar.managed.compare import ArmCounts, ShadowCounts
from sidecar.managed.versions import CANDIDATE, CHAMPION, LoadedVersion, RoutingTable

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


class LabelTally:
    """Labels joined since the last window closed, by (arm, version label)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()

    def add_labeled(self, arm: str, version: str, labeled: int, right: int) -> None:
        """Count joined labels (any thread)."""
        with self._lock:
            entry = self._counts.setdefault((arm, version), [0, 0])
            entry[0] += labeled
            entry[1] += right

    def take(self) -> dict[tuple[str, str], list[int]]:
        """The counts so far, starting over."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts


class Window:
    """Counts of one report window of one routing table."""

    def __init__(self, table: RoutingTable, start: float | None = None) -> None:
        self.table = table
        self.start = time.time() if start is None else start
        self.opened = time.monotonic()
        self.arms: dict[tuple[str, int], ArmCounts] = {}
        shadow = table.shadow
        self.shadow = (
            None if shadow is None else ShadowCounts(shadow.number, table.champion.rule.layout)
        )

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

    def close(
        self, name: str, replica: str, dropped: int, labels: dict[tuple[str, str], list[int]]
    ) -> Any:
        """The ``ReportWindowRequest`` of this window (without its sequence number);
        ``labels``: joined labels by (arm, version label) -> [labeled, correct]."""
        table = self.table
        end = time.time()
        self.arm(table.champion, CHAMPION)
        if table.candidate is not None and table.splitter.splits:
            self.arm(table.candidate, CANDIDATE)
        for (arm, label), (labeled, right) in labels.items():
            version = table.by_label.get(label)
            if version is not None:
                counts = self.arm(version, arm)
                counts.labeled += labeled
                counts.correct += right
        summaries = []
        for (_, number), counts in self.arms.items():
            summary = counts.to_proto()
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
        if self.shadow is not None:
            self.shadow.dropped += dropped
            request.shadow.CopyFrom(self.shadow.to_proto())
        return request
