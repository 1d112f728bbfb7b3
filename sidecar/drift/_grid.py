"""The lookup grid that streaming windows count against, derived from a baseline profile.

For each numeric feature the grid is the sorted distinct union of the reference sample's
values, the profile's bin edges and its min and max. A window counts its values in the grid's
cells (one per grid point for equal values, one per gap between points); since every edge and
sample value is a grid point, those cell counts determine exactly the window's bin counts, its
out-of-range count and its KS distance to the reference sample. Cell counts add up, so windows
merge exactly.

Served float32 or float16 values are compared at their own precision: a value counts as equal
to a grid point when it equals the point rounded to its type, so that ``float32(0.7)`` is the
baseline's 0.7 rather than a value just below it (see :class:`NarrowGrid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelplane.profiles import BaselineProfile, CategoricalFeature, NumericFeature
from sidecar.drift._kernels import bucket_table, frozen, snap_narrow

#: Lookup buckets per grid point; more buckets mean shorter searches and a larger table.
BUCKETS_PER_POINT = 2


@dataclass(frozen=True, eq=False)
class NumericGrid:
    """Grid and cell maps of one numeric feature (see the module docstring)."""

    feature: NumericFeature
    points: np.ndarray
    sample_values: np.ndarray
    sample_cum: np.ndarray
    cell_to_sample_cell: np.ndarray
    cell_to_bin: np.ndarray

    @property
    def cells(self) -> int:
        """Number of cells: two per grid point plus one."""
        return 2 * len(self.points) + 1

    @classmethod
    def build(cls, feature: NumericFeature) -> NumericGrid:
        """Derive the grid of ``feature``."""
        sample_values, multiplicity = np.unique(feature.sample, return_counts=True)
        parts = [sample_values, feature.edges]
        if feature.min is not None and feature.max is not None:
            parts.append(np.array([feature.min, feature.max]))
        points = np.unique(np.concatenate(parts)).astype(np.float64)
        size = len(points)
        cell_to_bin = np.empty(2 * size + 1, dtype=np.int64)
        # Gap cell 2i holds values just below points[i] (above every point when i == size).
        upper = np.concatenate((points, [np.inf]))
        cell_to_bin[0::2] = np.searchsorted(feature.edges, upper, side="left")
        cell_to_bin[1::2] = np.searchsorted(feature.edges, points, side="right")
        sample_values = sample_values.astype(np.float64)
        return cls(
            feature=feature,
            points=points,
            sample_values=sample_values,
            sample_cum=np.cumsum(multiplicity).astype(np.int64),
            cell_to_sample_cell=_cell_to_sample(points, sample_values),
            cell_to_bin=cell_to_bin,
        )

    def narrow(self, dtype: np.dtype[Any]) -> NarrowGrid:
        """How this grid reads values of the float type ``dtype`` (float32 or float16)."""
        with np.errstate(over="ignore"):
            rounded = _rounded(self.points, dtype)
            sample = _rounded(self.feature.sample, dtype)
        if np.array_equal(rounded, self.points):
            return NarrowGrid(self, rounded, exact=True)
        sample_values, multiplicity = np.unique(sample, return_counts=True)
        scoring = NumericGrid(
            feature=self.feature,
            points=self.points,
            sample_values=sample_values,
            sample_cum=np.cumsum(multiplicity).astype(np.int64),
            cell_to_sample_cell=_cell_to_sample(rounded, sample_values),
            cell_to_bin=self.cell_to_bin,
        )
        return NarrowGrid(scoring, rounded, exact=False)


def _rounded(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``values`` rounded to ``dtype`` (to nearest, beyond its range to an infinity), as float64."""
    return np.asarray(values, dtype=np.float64).astype(dtype).astype(np.float64)


def _cell_to_sample(points: np.ndarray, sample_values: np.ndarray) -> np.ndarray:
    """For each cell of sorted ``points``, the reference sample's cell holding its values: gap
    cell ``2j`` (just below distinct sample value ``j``) or equal cell ``2j + 1``."""
    size = len(points)
    cell_to_sample = np.empty(2 * size + 1, dtype=np.int64)
    upper = np.concatenate((points, [np.inf]))
    cell_to_sample[0::2] = 2 * np.searchsorted(sample_values, upper, side="left")
    equal_pos = np.searchsorted(sample_values, points, side="left")
    in_sample = np.zeros(size, dtype=bool)
    inside = equal_pos < len(sample_values)
    in_sample[inside] = sample_values[equal_pos[inside]] == points[inside]
    cell_to_sample[1::2] = np.where(in_sample, 2 * equal_pos + 1, 2 * equal_pos)
    return cell_to_sample


@dataclass(frozen=True, eq=False)
class NarrowGrid:
    """One numeric feature's grid as values of a narrower float type (float32, float16) see it.

    Comparing at the values' precision means comparing them with the baseline's points
    rounded to that type. Rounding keeps the points' order but may make neighbours equal; a
    value equal to such a rounded group counts in the cell of the group's last point (every
    edge of the group is then at or below it, as every rounded edge is at or below the
    value), and any other value already lies between the same two points unrounded. So the
    cells, the bins and the windows stay the baseline's; only the KS distance needs the
    reference sample rounded too, which :attr:`scoring` holds (its sample values that
    rounding made equal count as one). ``exact``: every point is a value of the type, and
    values need no mapping.
    """

    scoring: NumericGrid
    rounded: np.ndarray
    exact: bool


@dataclass(frozen=True, eq=False)
class NarrowGrids:
    """Every numeric feature's :class:`NarrowGrid` for one float type, packed for the kernel
    that maps values to their cells."""

    baseline: BaselineGrid
    grids: tuple[NarrowGrid, ...]
    rounded: np.ndarray
    exact_features: np.ndarray

    @classmethod
    def build(cls, baseline: BaselineGrid, dtype: np.dtype[Any]) -> NarrowGrids:
        """The views of ``baseline``'s numeric grids at the float type ``dtype``."""
        grids = tuple(g.narrow(dtype) for g in baseline.numeric)
        rounded = [n.rounded for n in grids]
        return cls(
            baseline=baseline,
            grids=grids,
            rounded=np.ascontiguousarray(
                np.concatenate(rounded) if rounded else np.empty(0), dtype=np.float64
            ),
            exact_features=np.array([n.exact for n in grids], dtype=np.bool_),
        )

    @property
    def exact(self) -> bool:
        """Whether every feature's points are values of the type (nothing to map)."""
        return bool(self.exact_features.all())

    def snap(self, batch: np.ndarray, feature: int | None = None) -> np.ndarray:
        """A rows x features matrix of the type (or one column of feature ``feature``) as
        float64 values that fall in the cells they belong to at their precision."""
        values = np.asarray(batch)
        if values.dtype == np.float16:
            values = values.astype(np.float32)  # exact: every float16 is a float32
        matrix = np.ascontiguousarray(values.reshape(-1, 1) if feature is not None else values)
        g = self.baseline
        part = slice(None) if feature is None else slice(feature, feature + 2)
        one = slice(None) if feature is None else slice(feature, feature + 1)
        out = np.empty(matrix.shape, dtype=np.float64)
        snap_narrow(
            frozen(matrix),
            g.points,
            g.point_offsets[part],
            g.table,
            g.table_offsets[part],
            g.lows[one],
            g.scales[one],
            self.rounded,
            self.exact_features[one],
            out,
        )
        return out if feature is None else out[:, 0]


@dataclass(frozen=True, eq=False)
class BaselineGrid:
    """Everything a window needs from a profile: numeric grids packed for the kernel, and
    the categorical features' known categories."""

    profile: BaselineProfile
    digest: str
    numeric: tuple[NumericGrid, ...]
    categorical: tuple[CategoricalFeature, ...]
    points: np.ndarray
    point_offsets: np.ndarray
    cell_offsets: np.ndarray
    table: np.ndarray
    table_offsets: np.ndarray
    lows: np.ndarray
    scales: np.ndarray

    @property
    def numeric_names(self) -> list[str]:
        """Numeric feature names, in profile order (the columns of a numeric batch)."""
        return [g.feature.name for g in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        """Categorical feature names, in profile order."""
        return [f.name for f in self.categorical]

    @classmethod
    def build(cls, profile: BaselineProfile) -> BaselineGrid:
        """Derive the grids of every numeric feature of ``profile``."""
        numeric = tuple(
            NumericGrid.build(f) for f in profile.features if isinstance(f, NumericFeature)
        )
        categorical = tuple(f for f in profile.features if isinstance(f, CategoricalFeature))
        sizes = np.array([len(g.points) for g in numeric], dtype=np.int64)
        point_offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        cell_offsets = np.concatenate(([0], np.cumsum(2 * sizes + 1))).astype(np.int64)
        points = np.concatenate([g.points for g in numeric]) if numeric else np.empty(0, np.float64)
        tables, lows, scales = [], [], []
        for g in numeric:
            buckets = max(1, BUCKETS_PER_POINT * len(g.points))
            low = float(g.points[0]) if len(g.points) else 0.0
            high = float(g.points[-1]) if len(g.points) else 0.0
            # Halved, the span of two finite floats cannot overflow (-1e308 to 1e308 would).
            half_span = high / 2 - low / 2
            scale = (buckets / 2) / half_span if half_span > 0 else 0.0
            if not np.isfinite(scale):
                scale = 0.0
            tables.append(bucket_table(g.points, low, scale, buckets))
            lows.append(low)
            scales.append(scale)
        table_sizes = np.array([len(t) for t in tables], dtype=np.int64)
        return cls(
            profile=profile,
            digest=profile.digest(),
            numeric=numeric,
            categorical=categorical,
            points=np.ascontiguousarray(points, dtype=np.float64),
            point_offsets=point_offsets,
            cell_offsets=cell_offsets,
            table=np.concatenate(tables) if tables else np.zeros(0, np.int32),
            table_offsets=np.concatenate(([0], np.cumsum(table_sizes))).astype(np.int64),
            lows=np.array(lows, dtype=np.float64),
            scales=np.array(scales, dtype=np.float64),
        )
