"""Scoring whole windows against a fully prepared reference (batch drift).

Preparing sorts each reference column once and computes its bin edges and counts; scoring a
window then costs a sort of the window's columns and a galloping merge per feature, with KS
computed exactly against the full reference, not a sample.

Columns are sorted once each, in place in a feature-major copy (a column of a row-major
matrix is strided; sorting it directly is slower, and sorting it twice was half the cost of a
window). Features are independent, so long columns are scored on a small thread pool:
numpy's sort and the compiled merge both release the GIL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from modelplane.profiles import quantile_edges
from modelplane.server.cpus import available_cores
from sidecar.drift._stats import (
    jensen_shannon,
    ks_sorted_pair,
    psi_from_counts,
    sorted_bin_counts,
)

_T = TypeVar("_T")


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


def _columns(matrix: np.ndarray) -> np.ndarray:
    """A feature-major float64 copy of a rows x features matrix: row ``i`` is column ``i``,
    contiguous, free to be sorted in place."""
    return np.array(matrix.T, dtype=np.float64, order="C")


def _sorted_finite(column: np.ndarray) -> np.ndarray:
    """Sort ``column`` in place and give the view of its finite values (NaN sorts last,
    -inf first and +inf just before NaN)."""
    column.sort()
    lo = int(np.searchsorted(column, -np.inf, side="right"))
    hi = int(np.searchsorted(column, np.inf, side="left"))
    return column[lo:hi]


#: Rows per column below which features are scored on one thread: sorting a shorter column
#: takes less than handing it to a thread, and the per-feature Python that remains (PSI, JS,
#: the p-value) holds the GIL anyway.
MIN_ROWS_FOR_THREADS = 16_384


def _per_feature(count: int, rows: int, work: Callable[[int], _T], workers: int | None) -> list[_T]:
    """``work(i)`` for every feature ``i`` of columns of ``rows`` values, in order: on up to
    ``workers`` threads (default: the cores this process may use) for long columns, each
    thread taking every n-th feature; on this thread for short ones."""
    threads = min(count, workers if workers is not None else available_cores())
    if threads <= 1 or rows < MIN_ROWS_FOR_THREADS:
        return [work(i) for i in range(count)]
    results: dict[int, _T] = {}

    def share(first: int) -> None:
        for i in range(first, count, threads):
            results[i] = work(i)

    with ThreadPoolExecutor(threads, thread_name_prefix="drift-score") as pool:
        for done in [pool.submit(share, t) for t in range(threads)]:
            done.result()  # raises what a thread raised
    return [results[i] for i in range(count)]


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """Sorted finite reference columns with their quantile bin edges and bin counts."""

    names: tuple[str, ...]
    sorted_columns: tuple[np.ndarray, ...]
    edges: tuple[np.ndarray, ...]
    bin_counts: tuple[np.ndarray, ...]

    @classmethod
    def prepare(
        cls,
        reference: np.ndarray,
        names: Sequence[str] | None = None,
        bins: int = 10,
        *,
        workers: int | None = None,
    ) -> ReferenceSet:
        """Prepare a rows x features reference matrix (NaN and infinities ignored) on up to
        ``workers`` threads (default: the cores this process may use)."""
        matrix = np.asarray(reference)
        if matrix.ndim != 2:
            raise ValueError("the reference must be a rows x features matrix")
        labels = (
            tuple(names) if names is not None else tuple(f"f{i}" for i in range(matrix.shape[1]))
        )
        if len(labels) != matrix.shape[1]:
            raise ValueError("one name per column is needed")
        copy = _columns(matrix)

        def one(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            column = _sorted_finite(copy[i])
            edges = quantile_edges(column, bins)
            return column, edges, sorted_bin_counts(column, edges)

        prepared = _per_feature(len(labels), matrix.shape[0], one, workers)
        return cls(
            names=labels,
            sorted_columns=tuple(p[0] for p in prepared),
            edges=tuple(p[1] for p in prepared),
            bin_counts=tuple(p[2] for p in prepared),
        )

    def score(self, current: np.ndarray, *, workers: int | None = None) -> list[WindowScore]:
        """PSI, KS (exact statistic, asymptotic p-value) and JS of every feature of a
        rows x features window, in column order, on up to ``workers`` threads (default: the
        cores this process may use)."""
        matrix = np.asarray(current)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            raise ValueError(f"expected a rows x {len(self.names)} window")
        copy = _columns(matrix)

        def one(i: int) -> WindowScore:
            name = self.names[i]
            cur = _sorted_finite(copy[i])
            ref = self.sorted_columns[i]
            if len(cur) == 0 or len(ref) == 0:
                nan = float("nan")
                return WindowScore(name, len(cur), nan, nan, nan, nan)
            bins = sorted_bin_counts(cur, self.edges[i])
            statistic, pvalue = ks_sorted_pair(ref, cur)
            return WindowScore(
                name=name,
                count=len(cur),
                psi=psi_from_counts(self.bin_counts[i], bins),
                ks_statistic=statistic,
                ks_pvalue=pvalue,
                js=jensen_shannon(self.bin_counts[i], bins),
            )

        return _per_feature(len(self.names), matrix.shape[0], one, workers)
