"""The population stability index, shared by the sidecar's drift engine and the control plane
(which recomputes it from the bin counts that sidecar replicas report and it merges)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

#: Proportions below this are raised to it before PSI's logarithm, so an empty bin on either
#: side adds a large but finite term instead of infinity.
PSI_EPSILON = 1e-4


def psi_from_counts(reference_counts: ArrayLike, current_counts: ArrayLike) -> float:
    """Population stability index of two count vectors over the same bins.

    ``sum((c - r) * ln(c / r))`` over bins, with ``r`` and ``c`` the bin proportions, each
    first raised to at least :data:`PSI_EPSILON` (no renormalisation). NaN when either side has
    no counts.
    """
    ref = np.asarray(reference_counts, dtype=np.float64).ravel()
    cur = np.asarray(current_counts, dtype=np.float64).ravel()
    rs, cs = ref.sum(), cur.sum()
    if rs <= 0 or cs <= 0:
        return math.nan
    r = np.maximum(ref / rs, PSI_EPSILON)
    c = np.maximum(cur / cs, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))
