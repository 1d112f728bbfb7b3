"""Scoring a window against its baseline: per-feature statistics and the drift verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sidecar.drift._grid import BaselineGrid, NumericGrid
from sidecar.drift._kernels import summarize_cells
from sidecar.drift._kolmogorov import ks_pvalue
from sidecar.drift._stats import chi_square, jensen_shannon, psi_from_counts
from sidecar.drift._window import WindowState


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted: any configured test that fires (None disables it).

    Numeric features: ``psi >= psi``, KS ``p < ks_pvalue`` or ``js >= js``. Categorical
    features (all unseen categories in one bin): ``psi >= psi`` or chi-square
    ``p < chi2_pvalue``. An undefined statistic (empty window, baseline without values) never
    fires.

    PSI and Jensen-Shannon fire only in windows of at least ``min_rows`` rows: over a few
    rows they read large for unchanged traffic (a bin left empty by chance adds about 0.7 to
    the PSI of 20 rows), whereas the KS and chi-square p-values take the window's size into
    account and judge windows of any size.
    """

    psi: float | None = 0.2
    ks_pvalue: float | None = 0.05
    chi2_pvalue: float | None = 0.05
    js: float | None = None
    min_rows: int = 100


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's statistics in one window; None marks an undefined statistic.

    Shares are fractions of the window's rows: ``missing_share`` of null, NaN or infinite
    values, ``out_of_range_share`` of finite values outside the baseline's [min, max] (every
    finite value when the baseline had none). ``count`` is the number of usable values.
    """

    name: str
    kind: str
    count: int
    missing_share: float | None
    out_of_range_share: float | None
    psi: float | None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    js: float | None = None
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    unseen_share: float | None = None
    drifted: bool = False


@dataclass(frozen=True)
class DriftReport:
    """A window's drift report: each feature's statistics and the share that drifted.

    ``min_rows`` is the threshold's: a window of fewer rows reports PSI and Jensen-Shannon but
    they flag no feature (:attr:`distances_judged` is False); see :class:`DriftThresholds`.
    """

    baseline: str
    start: float
    end: float | None
    rows: int
    features: tuple[FeatureDrift, ...]
    drifted_share: float | None
    min_rows: int = 0

    @property
    def distances_judged(self) -> bool:
        """Whether the window held enough rows for PSI and Jensen-Shannon to flag drift."""
        return self.rows >= self.min_rows

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted features."""
        return [f.name for f in self.features if f.drifted]

    def feature(self, name: str) -> FeatureDrift:
        """The statistics of feature ``name``; KeyError when absent."""
        for feat in self.features:
            if feat.name == name:
                return feat
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (undefined statistics as null)."""
        return asdict(self)


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _share(part: float, whole: int) -> float | None:
    return None if whole == 0 else float(part) / whole


def _score_numeric(
    grid: NumericGrid, cells: np.ndarray, missing: int, rows: int, thresholds: DriftThresholds
) -> FeatureDrift:
    bins = np.zeros(len(grid.feature.edges) + 1, np.int64)
    reference = len(grid.feature.sample)
    count, ks_stat = summarize_cells(
        cells, grid.cell_to_sample_cell, grid.cell_to_bin, grid.sample_cum, reference, bins
    )
    out_of_range = count if len(grid.points) == 0 else int(cells[0] + cells[-1])
    psi = psi_from_counts(grid.feature.bin_counts, bins)
    js = jensen_shannon(grid.feature.bin_counts, bins)
    ks_p = math.nan if math.isnan(ks_stat) else ks_pvalue(ks_stat, reference, count)
    judged = rows >= thresholds.min_rows
    drifted = bool(
        (judged and thresholds.psi is not None and psi >= thresholds.psi)
        or (thresholds.ks_pvalue is not None and ks_p < thresholds.ks_pvalue)
        or (judged and thresholds.js is not None and js >= thresholds.js)
    )
    return FeatureDrift(
        name=grid.feature.name,
        kind="numeric",
        count=count,
        missing_share=_share(missing, rows),
        out_of_range_share=_share(out_of_range, rows),
        psi=_defined(psi),
        ks_statistic=_defined(ks_stat),
        ks_pvalue=_defined(ks_p),
        js=_defined(js),
        drifted=drifted,
    )


def _score_categorical(
    grid: BaselineGrid, window: WindowState, position: int, thresholds: DriftThresholds
) -> FeatureDrift:
    feature = grid.categorical[position]
    # Every unseen category shares one bin (0 in the baseline), as the control plane scores
    # merged windows (controlplane.rollouts.drift): how an unseen share is spread over names,
    # or which names a merge folded into the overflow category, does not change the result.
    unseen_count = int(sum(window.unseen[position].values()))
    ref = np.fromiter((*feature.categories.values(), 0), np.int64)
    cur = np.append(window.categories[position], unseen_count)
    count = int(cur.sum())
    statistic, pvalue = chi_square(ref, cur)
    psi = psi_from_counts(ref, cur)
    rows = window.rows
    drifted = bool(
        (rows >= thresholds.min_rows and thresholds.psi is not None and psi >= thresholds.psi)
        or (thresholds.chi2_pvalue is not None and pvalue < thresholds.chi2_pvalue)
    )
    return FeatureDrift(
        name=feature.name,
        kind="categorical",
        count=count,
        missing_share=_share(int(window.categorical_missing[position]), rows),
        out_of_range_share=_share(unseen_count, rows),
        psi=_defined(psi),
        chi2_statistic=_defined(statistic),
        chi2_pvalue=_defined(pvalue),
        unseen_share=_share(unseen_count, rows),
        drifted=drifted,
    )


def score_window(
    grid: BaselineGrid,
    window: WindowState,
    thresholds: DriftThresholds | None = None,
    *,
    numeric: Sequence[NumericGrid] | None = None,
) -> DriftReport:
    """Every feature's statistics for ``window`` and the share of drifted features.

    Features come in profile order. Numeric: PSI and Jensen-Shannon distance over the
    profile's bins, KS (statistic and asymptotic p-value) against the profile's reference
    sample, exactly as :func:`sidecar.drift.ks_2samp` on that sample and the window's finite
    values. Categorical: chi-square and PSI over the profile's categories plus one bin for all
    unseen categories (empty in the baseline), the bins the control plane scores merged
    windows over. For categoricals the out-of-range share is the share of unseen categories.
    Below ``thresholds.min_rows`` rows PSI and Jensen-Shannon are reported but flag nothing.
    An empty window gives undefined (None) statistics and shares, no drifted feature and a
    None drifted share. ``numeric`` replaces ``grid``'s numeric grids for scoring (the same
    cells read at a narrower precision: see :meth:`NumericGrid.narrow`).
    """
    thresholds = thresholds or DriftThresholds()
    if window.baseline != grid.digest:
        raise ValueError("the window was counted against a different baseline")
    by_name: dict[str, FeatureDrift] = {}
    for i, ngrid in enumerate(grid.numeric if numeric is None else numeric):
        lo, hi = grid.cell_offsets[i], grid.cell_offsets[i + 1]
        by_name[ngrid.feature.name] = _score_numeric(
            ngrid, window.cells[lo:hi], int(window.missing[i]), window.rows, thresholds
        )
    for i, cfeature in enumerate(grid.categorical):
        by_name[cfeature.name] = _score_categorical(grid, window, i, thresholds)
    features = tuple(by_name[name] for name in grid.profile.feature_names)
    drifted = sum(f.drifted for f in features)
    share = None if window.rows == 0 or not features else drifted / len(features)
    return DriftReport(
        baseline=window.baseline,
        start=window.start,
        end=window.end,
        rows=window.rows,
        features=features,
        drifted_share=share,
        min_rows=thresholds.min_rows,
    )
