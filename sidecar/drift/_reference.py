"""Scoring whole windows against a fully prepared reference (batch drift).

Preparing sorts each reference column once and computes its bin edges and counts; scoring a
window then costs a sort of the window's columns and a galloping merge per feature, with KS
computed exactly against the full reference, not a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelplane.profiles import quantile_edges
from sidecar.drift._stats import (
    finite_sorted,
    jensen_shannon,
    ks_sorted_pair,
    psi_from_counts,
    sorted_bin_counts,
)


@dataclass(frozen=True)
class WindowScore:
    """One feature's statistics for one window against the full reference (NaN if
    undefined: no finite value on either side)."""

    name: str
    count: int
    psi: float
    ks_statistic: float
    ks_pvalue: float
    js: float


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """Sorted finite reference columns with their quantile bin edges and bin counts."""

    names: tuple[str, ...]
    sorted_columns: tuple[np.ndarray, ...]
    edges: tuple[np.ndarray, ...]
    bin_counts: tuple[np.ndarray, ...]

    @classmethod
    def prepare(
        cls, reference: np.ndarray, names: Sequence[str] | None = None, bins: int = 10
    ) -> ReferenceSet:
        """Prepare a rows x features reference matrix (NaN and infinities ignored)."""
        matrix = np.asarray(reference)
        if matrix.ndim != 2:
            raise ValueError("the reference must be a rows x features matrix")
        labels = (
            tuple(names) if names is not None else tuple(f"f{i}" for i in range(matrix.shape[1]))
        )
        if len(labels) != matrix.shape[1]:
            raise ValueError("one name per column is needed")
        columns = tuple(finite_sorted(matrix[:, i]) for i in range(matrix.shape[1]))
        edges = tuple(quantile_edges(c, bins) for c in columns)
        counts = tuple(sorted_bin_counts(c, e) for c, e in zip(columns, edges, strict=True))
        return cls(names=labels, sorted_columns=columns, edges=edges, bin_counts=counts)

    def score(self, current: np.ndarray) -> list[WindowScore]:
        """PSI, KS (exact statistic, asymptotic p-value) and JS of every feature of a
        rows x features window, in column order."""
        matrix = np.asarray(current)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            raise ValueError(f"expected a rows x {len(self.names)} window")
        sorted_window = np.sort(matrix, axis=0)
        scores = []
        for i, name in enumerate(self.names):
            cur = finite_sorted(sorted_window[:, i])
            ref = self.sorted_columns[i]
            if len(cur) == 0 or len(ref) == 0:
                nan = float("nan")
                scores.append(WindowScore(name, len(cur), nan, nan, nan, nan))
                continue
            bins = sorted_bin_counts(cur, self.edges[i])
            statistic, pvalue = ks_sorted_pair(ref, cur)
            scores.append(
                WindowScore(
                    name=name,
                    count=len(cur),
                    psi=psi_from_counts(self.bin_counts[i], bins),
                    ks_statistic=statistic,
                    ks_pvalue=pvalue,
                    js=jensen_shannon(self.bin_counts[i], bins),
                )
            )
        return scores
