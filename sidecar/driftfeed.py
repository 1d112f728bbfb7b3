"""Feeding served rows to the drift monitor, off the response path.

:class:`DriftFeed` is an observer on the hub's thread: it takes everything the hub hands over
at once, turns the requests' input tensors into the baseline's feature columns and makes one
:meth:`DriftMonitor.update` call. Closed windows are scored; their figures go to Prometheus
gauges (bounded by the feature count) and are kept for the admin RPC.

Input tensors become named columns by the prediction log's rules: a ``[-1]`` input is one
column named after the input; a ``[-1, F]`` input is ``F`` columns named by the feature names
(``--feature-names``, else the baseline's names when it has exactly ``F`` features), else
``x_0..x_{F-1}`` (``<input>_0..`` when the model has several 2-D inputs). Rows of requests
that failed in the model are left out. FP32 and FP16 values keep their type, so that the
monitor compares them with the baseline at their precision. A BYTES input that feeds a numeric
feature is read as numbers, a value that is none ("7x", "") counting as missing for that
feature (:func:`sidecar.drift.text_numbers`).

The hub gathers many requests into one run, counted in one update. Should that update fail,
the run is counted request by request, so that only the requests whose features cannot be
read are left out: their rows are counted in ``modelplane_drift_failed_rows_total`` and the
failure is logged (with its traceback at most once a minute).

The gauges of a version exist from its first closed window on: before one closes there is
no figure to show (an empty window's would be NaN), and a 0 would read as "checked, nothing
drifted".

With several workers (``--workers N``, prometheus_client's multiprocess mode) the gauges are
``liveall`` gauges: each worker's series carry a ``pid`` label, the process id of the process
that sets them. That is the process the feed runs in: the worker's observer process under
``--observer-mode process`` (the default whenever a worker monitors drift, unless its
prediction log is ``sync``), else the worker itself. ``GetDriftReport`` names it
(``gauges_pid``, next to ``worker_pid``), and ``modelplane drift report`` prints it. A sidecar
of one worker exports the gauges without a ``pid`` label.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelplane.errors import FailedPrecondition
from modelplane.profiles import BaselineProfile, CategoricalFeature, input_columns
from sidecar.drift import DriftMonitor, DriftReport, DriftThresholds, WindowState, text_numbers
from sidecar.metrics import RegistryFamilies, multiprocess
from sidecar.observers import BatchRecord, RecordRun, RejectedRecord, gather
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar.drift")

#: Value types the monitor takes as they are; others are widened to float64 first.
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: The least time between two logged tracebacks of failed drift updates.
FAILURE_LOG_S = 60.0


def _floats(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if array.dtype in _FLOATS:
        return array
    if array.dtype.kind in "OSU":  # BYTES: numbers as text
        return text_numbers(array)
    return np.asarray(array, dtype=np.float64)


def thresholds_of(settings: Any) -> DriftThresholds:
    """The drift thresholds a sidecar's settings (``--drift-*``) set."""
    return DriftThresholds(
        psi=settings.drift_psi,
        ks_pvalue=settings.drift_ks_pvalue,
        chi2_pvalue=settings.drift_chi2_pvalue,
        js=settings.drift_js,
        min_rows=settings.drift_min_rows,
    )


def column_names(
    signature: Signature, feature_names: Sequence[str] | None
) -> dict[str, tuple[str, int | None]]:
    """Every feature column the inputs provide: name -> (input, column index or None), by
    :func:`modelplane.profiles.input_columns`."""
    return input_columns([(s.name, s.shape) for s in signature.inputs], feature_names)


@dataclass(frozen=True)
class FeatureSource:
    """Where each baseline feature comes from in the requests' inputs."""

    names: tuple[str, ...]
    sources: tuple[tuple[str, int | None], ...]
    categorical: bool

    @classmethod
    def plan(
        cls,
        signature: Signature,
        profile: BaselineProfile,
        feature_names: Sequence[str] | None,
        matrix_order: Sequence[str],
    ) -> FeatureSource:
        """Map the profile's features to input columns; FAILED_PRECONDITION when some are
        missing. ``matrix_order`` is the column order the monitor takes a matrix in."""
        available = column_names(signature, feature_names)
        missing = [n for n in profile.feature_names if n not in available]
        if missing:
            raise FailedPrecondition(
                f"the baseline profiles {', '.join(missing)}, which the model's inputs do not "
                f"provide (they provide {', '.join(available) or 'no tabular columns'}); name "
                "the input columns with --feature-names, leave a training file's label column "
                "out with --baseline-label COLUMN, or profile only the model's features",
                reason="BASELINE_MISMATCH",
            )
        categorical = any(isinstance(f, CategoricalFeature) for f in profile.features)
        names = tuple(profile.feature_names if categorical else matrix_order)
        return cls(names, tuple(available[n] for n in names), categorical)

    def extract(self, inputs: dict[str, np.ndarray[Any, Any]]) -> Any:
        """The features of ``inputs``: a matrix (numeric profiles) or a name -> column map
        (categorical profiles, or numeric inputs of several float types)."""
        tensors = {tensor for tensor, _ in self.sources}
        if not self.categorical and len(tensors) == 1:
            # The usual case, one tabular input: one slice (or none) instead of F columns.
            array = _floats(inputs[next(iter(tensors))])
            indices = [index for _, index in self.sources if index is not None]
            if len(indices) < len(self.sources):
                return array.reshape(-1, 1)
            if indices != list(range(array.shape[1])):
                array = array[:, indices]
            return array
        columns = []
        for tensor, index in self.sources:
            array = inputs[tensor]
            columns.append(array if index is None else array[:, index])
        if self.categorical:
            return dict(zip(self.names, columns, strict=True))
        columns = [_floats(c) for c in columns]
        if len({c.dtype for c in columns}) > 1:
            # Each column is compared at its own precision: the monitor reads their types.
            return dict(zip(self.names, columns, strict=True))
        return np.column_stack(columns)


class DriftFamilies(RegistryFamilies):
    """The ``modelplane_drift_*`` gauge families of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        # With several workers each reports its own traffic: one series per process that sets
        # them (``pid``: the worker's observer process, or the worker; see the module's doc).
        mode: dict[str, Any] = {"multiprocess_mode": "liveall"} if multiprocess() else {}
        names = ["model", "version"]
        self.psi = Gauge(
            "modelplane_drift_psi",
            "Population stability index of a feature in the last closed drift window",
            [*names, "feature"],
            registry=registry,
            **mode,
        )
        self.ks_pvalue = Gauge(
            "modelplane_drift_ks_pvalue",
            "KS p-value (numeric) or chi-square p-value (categorical) of a feature in the last "
            "closed drift window",
            [*names, "feature"],
            registry=registry,
            **mode,
        )
        self.drifted = Gauge(
            "modelplane_drift_feature_drifted",
            "1 when a feature was flagged as drifted in the last closed drift window",
            [*names, "feature"],
            registry=registry,
            **mode,
        )
        self.share = Gauge(
            "modelplane_drift_drifted_share",
            "Share of features flagged as drifted in the last closed drift window",
            names,
            registry=registry,
            **mode,
        )
        self.rows = Gauge(
            "modelplane_drift_window_rows",
            "Rows counted in the last closed drift window",
            names,
            registry=registry,
            **mode,
        )
        self.failed = Counter(
            "modelplane_drift_failed_rows",
            "Rows of served requests left out of drift monitoring because their features could "
            "not be read (the sidecar's log says why)",
            names,
            registry=registry,
        )


class DriftGauges:
    """The last closed window's figures of one model version as Prometheus gauges (created at
    the first closed window), and the count of rows drift failed to read."""

    def __init__(self, registry: CollectorRegistry, model: str, version: str) -> None:
        families: DriftFamilies = DriftFamilies.of(registry)
        self._families = families
        self._key = (model, version)
        self._closed = False
        self._lock = threading.Lock()
        families.acquire(self._key)
        self._failed = families.failed.labels(model, version)

    def show(self, report: DriftReport) -> None:
        """Set every gauge from ``report``."""
        with self._lock:
            if not self._closed:
                self._show(report)

    def failed(self, rows: int) -> None:
        """``rows`` rows left out of drift: their features could not be read."""
        self._failed.inc(rows)

    def _show(self, report: DriftReport) -> None:
        nan = float("nan")
        f = self._families
        for feat in report.features:
            labels = (*self._key, feat.name)
            f.note(self._key, feat.name)
            f.psi.labels(*labels).set(nan if feat.psi is None else feat.psi)
            pvalue = feat.ks_pvalue if feat.ks_pvalue is not None else feat.chi2_pvalue
            f.ks_pvalue.labels(*labels).set(nan if pvalue is None else pvalue)
            f.drifted.labels(*labels).set(1.0 if feat.drifted else 0.0)
        f.share.labels(*self._key).set(
            nan if report.drifted_share is None else report.drifted_share
        )
        f.rows.labels(*self._key).set(report.rows)

    def close(self) -> None:
        """The version is no longer served: drop its series (see :mod:`sidecar.metrics` on
        multiprocess mode, where they are set to NaN instead)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        f = self._families
        features = f.release(self._key)
        if features is None:
            return
        nan = float("nan")
        for name in features:
            for family in (f.psi, f.ks_pvalue, f.drifted):
                if multiprocess():
                    family.labels(*self._key, name).set(nan)
                else:
                    family.remove(*self._key, name)
        if not multiprocess():
            f.failed.remove(*self._key)
        for family in (f.share, f.rows):
            if self._key not in _children(family):
                continue  # No window closed: there is no series, and none is made for NaN.
            if multiprocess():
                family.labels(*self._key).set(nan)
            else:
                family.remove(*self._key)


def _children(family: Any) -> set[tuple[str, ...]]:
    """The (model, version) label values of the series ``family`` holds now."""
    return {(s.labels["model"], s.labels["version"]) for s in family.collect()[0].samples}


class DriftReports(Protocol):
    """What the admin RPC asks of a drift feed, in process or in the observer process."""

    def current(self) -> tuple[Any, DriftReport]:
        """The open window (when kept here) and its report so far."""
        ...

    def last(self) -> tuple[Any, DriftReport] | None:
        """The last closed window (when kept here) and its report, if one has closed."""
        ...


class DriftFeed:
    """Hub observer counting served rows into a :class:`DriftMonitor`."""

    #: Drift counts feature values; it never reads request ids.
    needs_ids = False

    @property
    def gauges_pid(self) -> int:
        """The process that sets the gauges (their ``pid`` label with several workers): this
        one."""
        return os.getpid()

    def __init__(
        self,
        monitor: DriftMonitor,
        source: FeatureSource,
        gauges: DriftGauges | None = None,
    ) -> None:
        self.monitor = monitor
        self.source = source
        self.gauges = gauges
        self._lock = threading.Lock()
        self._last: WindowState | None = None
        self._last_report: DriftReport | None = None
        #: Rows left out because their features could not be read, since start.
        self.failed_rows = 0
        self._logged_at = -FAILURE_LOG_S

    def on_records(self, records: Sequence[BatchRecord | RejectedRecord]) -> None:
        """Count a list of records, gathered into runs first."""
        self.on_runs(gather(records))

    def on_runs(self, runs: Sequence[RecordRun | RejectedRecord]) -> None:
        """Count the rows of every successful request the hub gathered: one update per run,
        or, should that fail, one per request (see the module's doc)."""
        for part in runs:
            if not isinstance(part, RecordRun):
                continue
            inputs = part.inputs
            mask = part.ok_rows()
            if mask is not None:
                inputs = {name: array[mask] for name, array in inputs.items()}
            try:
                closed = self.monitor.update(self.source.extract(inputs))
            except Exception:
                # An update reads its whole batch before it counts any of it: nothing of the
                # run was counted, so each request can be counted on its own.
                closed = self._by_request(part)
            self._closed(closed)

    def _by_request(self, run: RecordRun) -> list[WindowState]:
        closed: list[WindowState] = []
        tensors = {tensor for tensor, _ in self.source.sources}
        start = 0
        for rows, status in zip(run.row_counts, run.status, strict=True):
            stop = start + rows
            if status == "OK" and rows:
                inputs = {t: run.inputs[t][start:stop] for t in tensors}
                try:
                    closed += self.monitor.update(self.source.extract(inputs))
                except Exception:
                    self._failed(rows)
            start = stop
        return closed

    def _failed(self, rows: int) -> None:
        """Count and log ``rows`` rows left out (called while handling their exception)."""
        self.failed_rows += rows
        if self.gauges is not None:
            self.gauges.failed(rows)
        now = time.monotonic()
        if now - self._logged_at >= FAILURE_LOG_S:
            self._logged_at = now
            log.exception(
                "drift could not read a request's features; its rows are left out",
                rows=rows,
                failed_rows=self.failed_rows,
            )
        else:
            log.debug("drift left a request's rows out", rows=rows, failed_rows=self.failed_rows)

    def on_batch(self, record: BatchRecord) -> None:
        """Count one session batch."""
        self.on_records([record])

    def on_rejected(self, record: RejectedRecord) -> None:
        """Rejected requests never ran: nothing to count."""

    def on_tick(self) -> None:
        """Close the window when its time is up, even without traffic."""
        self._closed(self.monitor.poll())

    def _closed(self, windows: list[WindowState]) -> None:
        if not windows:
            return
        window = windows[-1]
        report = self.monitor.score(window)
        with self._lock:
            self._last, self._last_report = window, report
        if self.gauges is not None:
            self.gauges.show(report)

    def current(self) -> tuple[WindowState, DriftReport]:
        """The open window and its report so far."""
        window = self.monitor.current()
        return window, self.monitor.score(window)

    def last(self) -> tuple[WindowState, DriftReport] | None:
        """The last closed window and its report, if a window has closed."""
        with self._lock:
            if self._last is None or self._last_report is None:
                return None
            return self._last, self._last_report
