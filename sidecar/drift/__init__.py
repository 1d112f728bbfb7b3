"""Drift detection: scipy-compatible statistics and streaming windows, compiled with Numba.

Statistics on whole samples: :func:`ks_2samp`, :func:`wasserstein`, :func:`jensen_shannon`,
:func:`chi_square`, :func:`psi`. Streaming: :class:`DriftMonitor` counts rows into tumbling,
mergeable :class:`WindowState` windows against a version's baseline profile and scores them
into :class:`DriftReport` objects. :class:`ReferenceSet` scores whole windows against a
prepared full reference. :func:`text_numbers` reads numbers carried as text (a BYTES input
feeding a numeric feature), NaN (missing) where a value is none.
"""

from sidecar.drift._grid import BaselineGrid
from sidecar.drift._kolmogorov import kolmogorov_sf, ks_pvalue
from sidecar.drift._monitor import DriftMonitor
from sidecar.drift._reference import ReferenceSet, WindowScore
from sidecar.drift._report import DriftReport, DriftThresholds, FeatureDrift, score_window
from sidecar.drift._stats import (
    PSI_EPSILON,
    chi2_sf,
    chi_square,
    jensen_shannon,
    ks_2samp,
    psi,
    psi_from_counts,
    wasserstein,
)
from sidecar.drift._text import text_numbers
from sidecar.drift._window import WindowState

__all__ = [
    "PSI_EPSILON",
    "BaselineGrid",
    "DriftMonitor",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "ReferenceSet",
    "WindowScore",
    "WindowState",
    "chi2_sf",
    "chi_square",
    "jensen_shannon",
    "kolmogorov_sf",
    "ks_2samp",
    "ks_pvalue",
    "psi",
    "psi_from_counts",
    "score_window",
    "text_numbers",
    "wasserstein",
]
