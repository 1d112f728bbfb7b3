"""Streaming drift: tumbling windows of counts against a version's baseline profile."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelplane.profiles import (
    BaselineProfile,
    boolean_spelling,
    category_values,
    numeric_values,
)
from sidecar.drift._grid import BaselineGrid, NarrowGrids
from sidecar.drift._kernels import accumulate, frozen, snap_narrow, warm_scoring
from sidecar.drift._report import DriftReport, DriftThresholds, score_window
from sidecar.drift._text import is_text_type, text_numbers
from sidecar.drift._window import WindowState

#: Float types whose values are compared with the baseline at their own precision.
NARROW_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))
_ARROW_NARROW: dict[pa.DataType, np.dtype[Any]] = {
    pa.float16(): np.dtype(np.float16),
    pa.float32(): np.dtype(np.float32),
}


class DriftMonitor:
    """Counts incoming rows into tumbling windows and scores closed windows.

    A window closes after ``window_rows`` rows (a batch that crosses the boundary is split
    there) or once ``window_seconds`` have passed since it started (checked on each update
    and on :meth:`poll`; windows are aligned to the first one's start and empty spans are
    skipped). Updates are O(rows x features) with one binary search per numeric value and no
    per-row allocation; a lock makes each batch update atomic, so several threads may feed
    one monitor. ``clock`` gives wall-clock seconds.

    Values that arrive as float32 or float16 (a matrix of that type, or such a column) are
    compared with the baseline at their own precision, as if its edges and reference sample
    had been rounded to that type: a model's FP32 input carrying the training data's 0.7
    holds ``float32(0.7)``, which is not the float64 0.7 and must still count as equal to it.
    The bins stay the baseline's (an edge that rounding makes equal to its neighbour leaves
    the bin between them empty), so windows merge and compare with the profile's counts as
    before; a feature once fed at a narrower precision is scored at it (KS against the
    rounded reference sample).
    """

    def __init__(
        self,
        profile: BaselineProfile,
        *,
        window_rows: int | None = None,
        window_seconds: float | None = None,
        thresholds: DriftThresholds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_rows is not None and window_rows < 1:
            raise ValueError("window_rows must be at least 1")
        if window_seconds is not None and not window_seconds > 0:
            raise ValueError("window_seconds must be positive")
        self.grid = BaselineGrid.build(profile)
        #: How each categorical feature's baseline spells booleans (None: not boolean words).
        self._booleans = tuple(boolean_spelling(f.categories) for f in self.grid.categorical)
        self.window_rows = window_rows
        self.window_seconds = window_seconds
        self.thresholds = thresholds or DriftThresholds()
        self._clock = clock
        self._lock = threading.Lock()
        self._window = WindowState.empty(self.grid, clock())
        #: Per narrow float type, each numeric feature's view of the grid (built when needed).
        self._narrow: dict[np.dtype[Any], NarrowGrids] = {}
        #: The narrowest float type each numeric feature's values arrived in (None: wider).
        self._precision: list[np.dtype[Any] | None] = [None] * len(self.grid.numeric)
        # Compile (or load from Numba's cache) the kernels now, at start-up, rather than on
        # the first batch, the first closed window or the first report.
        warm_scoring()
        _warm_counting(self.grid, self._window)

    @property
    def numeric_names(self) -> list[str]:
        """The columns, in order, of a matrix passed to :meth:`update`."""
        return self.grid.numeric_names

    def current(self) -> WindowState:
        """A copy of the open window's state."""
        with self._lock:
            return self._window.merge(WindowState.empty(self.grid, self._window.start))

    def score(self, window: WindowState) -> DriftReport:
        """The drift report of a (closed or merged) window."""
        with self._lock:
            precision = list(self._precision)
        numeric = [
            g if p is None else self._narrow_grids(p).grids[i].scoring
            for i, (g, p) in enumerate(zip(self.grid.numeric, precision, strict=True))
        ]
        return score_window(self.grid, window, self.thresholds, numeric=numeric)

    def _narrow_grids(self, dtype: np.dtype[Any]) -> NarrowGrids:
        grids = self._narrow.get(dtype)
        if grids is None:
            grids = NarrowGrids.build(self.grid, dtype)
            self._narrow[dtype] = grids
        return grids

    def update(
        self, batch: np.ndarray | Mapping[str, Any] | pa.RecordBatch | pa.Table
    ) -> list[WindowState]:
        """Add a batch of rows; returns the windows this closed (usually none).

        ``batch`` is a rows x features matrix whose columns are :attr:`numeric_names`
        (profiles without categorical features), or a mapping from feature name to a column
        (anything ``pyarrow.array`` takes), or a pyarrow RecordBatch/Table with the features
        as columns. Every profile feature must be there. Float32 and float16 values are
        compared at their precision (see the class docstring). A numeric feature's column of
        text (strings or bytes, from a BYTES input) is read as numbers; a value that is none
        counts as missing (:func:`sidecar.drift._text.text_numbers`); in a categorical
        feature an empty text counts as missing, as the baseline counts it
        (:func:`modelplane.profiles.category_values`). A batch is read whole
        before any of it is counted: one that fails leaves the window as it was.
        """
        if isinstance(batch, np.ndarray):
            matrix, categorical, types = self._check_matrix(batch)
        else:
            matrix, categorical, types = self._columns(batch)
        rows = matrix.shape[0]
        closed: list[WindowState] = []
        with self._lock:
            for i, dtype in enumerate(types):
                seen = self._precision[i]
                if dtype is not None and (seen is None or dtype.itemsize < seen.itemsize):
                    self._precision[i] = dtype
            self._rotate_by_time(closed)
            start = 0
            while start < rows:
                room = rows if self.window_rows is None else self.window_rows - self._window.rows
                stop = min(rows, start + room)
                self._add(matrix, categorical, start, stop)
                start = stop
                if self.window_rows is not None and self._window.rows >= self.window_rows:
                    closed.append(self._close(self._clock()))
        return closed

    def poll(self) -> list[WindowState]:
        """Close the open window if its time is up; returns the closed window, if any."""
        closed: list[WindowState] = []
        with self._lock:
            self._rotate_by_time(closed)
        return closed

    def flush(self) -> WindowState:
        """Close the open window now, whatever its size or age, and return it."""
        with self._lock:
            return self._close(self._clock())

    def _close(self, now: float) -> WindowState:
        """Close the open window at ``now`` and open the next. A wall clock that stepped back
        (NTP) would give a window ending before it started and a next one overlapping it:
        the window ends no earlier than it started, and the next starts there."""
        window = self._window
        now = max(now, window.start)
        window.end = now
        self._window = WindowState.empty(self.grid, now)
        return window

    def _rotate_by_time(self, closed: list[WindowState]) -> None:
        if self.window_seconds is None:
            return
        now = self._clock()
        start = self._window.start
        if now < start + self.window_seconds:
            return
        # At wall-clock epochs (now - start) / window_seconds can round to either side of the
        # count of whole windows that passed (to 0 right on a boundary), so the next start is
        # settled on the same arithmetic as the check above: the last start + k * window at or
        # before now, at least one window on. Rounding is off by a window at most; the steps
        # are bounded so that a count too large for float steps cannot loop.
        ws = self.window_seconds
        spans = max(1, math.floor((now - start) / ws))
        for _ in range(4):
            if spans > 1 and start + spans * ws > now:
                spans -= 1
            elif start + (spans + 1) * ws <= now:
                spans += 1
            else:
                break
        end = start + ws
        if self._window.rows:
            window = self._window
            window.end = end
            closed.append(window)
        self._window = WindowState.empty(self.grid, start + spans * ws)

    def _check_matrix(
        self, batch: np.ndarray
    ) -> tuple[np.ndarray, None, list[np.dtype[Any] | None]]:
        if self.grid.categorical:
            raise ValueError(
                "this profile has categorical features; pass a mapping or an Arrow batch"
            )
        if batch.ndim != 2 or batch.shape[1] != len(self.grid.numeric):
            raise ValueError(
                f"expected a rows x {len(self.grid.numeric)} matrix with columns "
                f"{self.grid.numeric_names}, got shape {batch.shape}"
            )
        features = batch.shape[1]
        if batch.dtype in NARROW_FLOATS:
            grids = self._narrow_grids(batch.dtype)
            if not grids.exact:
                return grids.snap(batch), None, [batch.dtype] * features
            # The counting kernels take float32 and float64; float16 widens to float32 exactly.
            values = batch.astype(np.float32) if batch.dtype == np.float16 else batch
            return np.ascontiguousarray(values), None, [batch.dtype] * features
        if batch.dtype != np.float64:
            batch = batch.astype(np.float64)
        return np.ascontiguousarray(batch), None, [None] * features

    def _columns(
        self, batch: Mapping[str, Any] | pa.RecordBatch | pa.Table
    ) -> tuple[np.ndarray, dict[str, Any], list[np.dtype[Any] | None]]:
        def column(name: str) -> Any:
            try:
                if isinstance(batch, pa.RecordBatch | pa.Table):
                    return batch.column(name)
                return batch[name]
            except KeyError as err:
                raise ValueError(f"the batch has no column for feature {name!r}") from err

        arrays = [pa.array(column(n)) for n in self.grid.numeric_names]
        types: list[np.dtype[Any] | None] = [_ARROW_NARROW.get(a.type) for a in arrays]
        numeric = [
            _numbers(a)
            if t is None or self._narrow_grids(t).exact_features[i]
            else self._narrow_grids(t).snap(numeric_values(a), i)
            for i, (a, t) in enumerate(zip(arrays, types, strict=True))
        ]
        lengths = {len(c) for c in numeric}
        # Read as category text here, before the lock: a column that cannot be read fails
        # the update before any of the batch is counted. An empty text is missing, as in the
        # baseline.
        categorical = {
            feature.name: category_values(pa.array(column(feature.name)), booleans)
            for feature, booleans in zip(self.grid.categorical, self._booleans, strict=True)
        }
        lengths |= {len(c) for c in categorical.values()}
        if len(lengths) > 1:
            raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0
        matrix = (
            np.ascontiguousarray(np.column_stack(numeric))
            if numeric
            else np.empty((rows, 0), dtype=np.float64)
        )
        return matrix, categorical, types

    def _add(
        self, matrix: np.ndarray, categorical: dict[str, Any] | None, start: int, stop: int
    ) -> None:
        window = self._window
        part = matrix[start:stop]
        if part.shape[1]:
            grid = self.grid
            accumulate(
                frozen(part),
                grid.points,
                grid.point_offsets,
                grid.table,
                grid.table_offsets,
                grid.lows,
                grid.scales,
                window.cells,
                grid.cell_offsets,
                window.missing,
            )
        if categorical:
            for position, feature in enumerate(self.grid.categorical):
                values = categorical[feature.name][start:stop]
                window.categorical_missing[position] += values.null_count
                counts = pc.value_counts(pc.drop_null(values))
                window.add_categories(
                    self.grid,
                    position,
                    Counter(
                        dict(
                            zip(
                                counts.field("values").to_pylist(),
                                counts.field("counts").to_pylist(),
                                strict=True,
                            )
                        )
                    ),
                )
        window.rows += stop - start


def _numbers(array: pa.Array) -> np.ndarray:
    """A numeric feature's column as float64, nulls as NaN; text read as numbers, NaN where
    it is none (see :func:`text_numbers`)."""
    if is_text_type(array.type):
        return text_numbers(array.to_numpy(zero_copy_only=False))
    return numeric_values(array)


def _warm_counting(grid: BaselineGrid, window: WindowState) -> None:
    """Compile the counting kernels for the batches updates hand them, counting nothing (the
    batches have no rows): read-only (:func:`frozen`) float64 and float32 matrices."""
    n = len(grid.numeric)
    if not n:
        return
    args = (grid.points, grid.point_offsets, grid.table, grid.table_offsets, grid.lows, grid.scales)
    for dtype in (np.float64, np.float32):
        accumulate(
            frozen(np.zeros((0, n), dtype)), *args, window.cells, grid.cell_offsets, window.missing
        )
        snap_narrow(
            frozen(np.zeros((0, 1), dtype)),
            *args,
            grid.points,
            np.ones(1, np.bool_),
            np.zeros((0, 1)),
        )
