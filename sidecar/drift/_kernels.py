"""Numba kernels behind the drift statistics and the streaming accumulators.

Every kernel takes float64 / int64 arrays only, so each compiles once (``cache=True`` keeps
the machine code between processes). Sorting is left to numpy, whose vectorised sort is
faster than a compiled quicksort.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _gallop_left(a, start, value):  # pragma: no cover - compiled
    """First index >= start with a[index] >= value (a sorted ascending)."""
    n = a.shape[0]
    if start >= n or a[start] >= value:
        return start
    lo = start
    step = 1
    hi = start + 1
    while hi < n and a[hi] < value:
        lo = hi
        step *= 2
        hi = start + step
    if hi > n:
        hi = n
    # a[lo] < value and (hi == n or a[hi] >= value)
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if a[mid] < value:
            lo = mid
        else:
            hi = mid
    return hi


@nb.njit(cache=True, nogil=True)
def _gallop_right(a, start, value):  # pragma: no cover - compiled
    """First index >= start with a[index] > value (a sorted ascending)."""
    n = a.shape[0]
    if start >= n or a[start] > value:
        return start
    lo = start
    step = 1
    hi = start + 1
    while hi < n and a[hi] <= value:
        lo = hi
        step *= 2
        hi = start + step
    if hi > n:
        hi = n
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if a[mid] <= value:
            lo = mid
        else:
            hi = mid
    return hi


@nb.njit(cache=True, nogil=True)
def ks_sorted(a, b):  # pragma: no cover - compiled
    """Two-sample KS statistic of sorted finite samples ``a`` and ``b`` (both non-empty).

    Walks the distinct values of the shorter sample and gallops through the longer one, so
    the cost is about len(short) * log(len(long) / len(short)). The differences are formed as
    count_a / n_a - count_b / n_b at the same points as the direct definition, so the result
    is bit-for-bit the supremum over the pooled sample.
    """
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    na = a.shape[0]
    nb_ = b.shape[0]
    fa = float(na)
    fb = float(nb_)
    best = 0.0
    ia = 0
    j = 0
    while j < nb_:
        value = b[j]
        lo = _gallop_left(a, ia, value)
        gap = abs(lo / fa - j / fb)
        if gap > best:
            best = gap
        hi = _gallop_right(a, lo, value)
        j2 = _gallop_right(b, j, value)
        gap = abs(hi / fa - j2 / fb)
        if gap > best:
            best = gap
        ia = hi
        j = j2
    return best


@nb.njit(cache=True, nogil=True)
def wasserstein_sorted(a, b):  # pragma: no cover - compiled
    """First Wasserstein distance between sorted finite samples (the area between CDFs)."""
    na = a.shape[0]
    nb_ = b.shape[0]
    fa = float(na)
    fb = float(nb_)
    i = 0
    j = 0
    total = 0.0
    while i < na or j < nb_:
        value = a[i] if j >= nb_ or (i < na and a[i] <= b[j]) else b[j]
        while i < na and a[i] <= value:
            i += 1
        while j < nb_ and b[j] <= value:
            j += 1
        if i >= na and j >= nb_:
            break
        following = a[i] if j >= nb_ or (i < na and a[i] <= b[j]) else b[j]
        total += abs(i / fa - j / fb) * (following - value)
    return total


@nb.njit(cache=True, nogil=True, inline="always")
def _bucket(x, low, scale, buckets):  # pragma: no cover - compiled
    """Bucket of ``x`` in a table of ``buckets`` equal-width buckets starting at ``low``.

    Monotone in ``x`` (floating-point subtraction, multiplication and truncation all are),
    which is all the lookup table needs to stay exact. ``x - low`` may overflow to an
    infinity, which clamps; only a zero ``scale`` (one bucket) can then give NaN, and every
    value of such a table is in bucket 0.
    """
    q = (x - low) * scale
    if not q >= 0.0:
        return 0
    if q >= buckets:
        return buckets - 1
    return int(q)


@nb.njit(cache=True, nogil=True, inline="always")
def _first_not_below(x, grid, g0, table, t0, buckets, low, scale):  # pragma: no cover - compiled
    """Index in ``grid`` of the first of feature's points (from ``g0``) not below ``x``: the
    bucket table narrows the search to the points of ``x``'s bucket, bisected."""
    b = t0 + _bucket(x, low, scale, buckets)
    lo = g0 + table[b]
    n = table[b + 1] - table[b]
    while n > 0:
        half = n >> 1
        if grid[lo + half] < x:
            lo += half + 1
            n -= half + 1
        else:
            n = half
    return lo


@nb.njit(cache=True, nogil=True)
def bucket_table(points, low, scale, buckets):  # pragma: no cover - compiled
    """For sorted ``points``: entry ``b`` is how many points fall in buckets before ``b``
    (``buckets + 1`` entries), computed with the same arithmetic as :func:`accumulate`."""
    table = np.zeros(buckets + 1, dtype=np.int32)
    for j in range(points.shape[0]):
        table[_bucket(points[j], low, scale, buckets) + 1] += 1
    for b in range(buckets):
        table[b + 1] += table[b]
    return table


@nb.njit(cache=True, nogil=True)
def accumulate(
    batch, grid, grid_offsets, table, table_offsets, lows, scales, counts, count_offsets, missing
):  # pragma: no cover - compiled
    """Add a rows x features float batch to per-feature cell counts.

    Feature ``f`` has sorted distinct grid points ``grid[grid_offsets[f]:grid_offsets[f+1]]``
    (G of them) and ``2G + 1`` cells at ``counts[count_offsets[f]:]``: cell ``2i`` holds values
    strictly between grid points ``i - 1`` and ``i`` (below the first for ``i == 0``, above the
    last for ``i == G``), cell ``2i + 1`` values equal to grid point ``i``. NaN and infinities
    count in ``missing[f]``. An equal-width bucket table (:func:`bucket_table`) narrows each
    value's binary search to the grid points of its bucket. Nothing is allocated.
    """
    rows = batch.shape[0]
    features = batch.shape[1]
    for f in range(features):
        g0 = grid_offsets[f]
        size = grid_offsets[f + 1] - g0
        c0 = count_offsets[f]
        t0 = table_offsets[f]
        buckets = table_offsets[f + 1] - t0 - 1
        low = lows[f]
        scale = scales[f]
        for r in range(rows):
            x = np.float64(batch[r, f])
            if not np.isfinite(x):
                missing[f] += 1
                continue
            lo = _first_not_below(x, grid, g0, table, t0, buckets, low, scale)
            pos = lo - g0
            cell = 2 * pos
            if pos < size and grid[lo] == x:
                cell += 1
            counts[c0 + cell] += 1


@nb.njit(cache=True, nogil=True)
def snap_narrow(
    batch, grid, grid_offsets, table, table_offsets, lows, scales, rounded, exact, out
):  # pragma: no cover - compiled
    """Write a rows x features batch of float32 values (float16 widened) into ``out`` as
    float64, each value equal to some of feature ``f``'s grid points rounded to the values'
    type (``rounded``, aligned with ``grid``) replaced by the last such point. Features
    marked ``exact`` are copied unchanged.

    A point below the value rounds to at most the value (rounding is monotone and the value
    is of the type), so the last point rounding to at most the value is found by walking up
    from the last point below it, which the bucket table finds as in :func:`accumulate`.
    """
    rows = batch.shape[0]
    features = batch.shape[1]
    for f in range(features):
        g0 = grid_offsets[f]
        g1 = grid_offsets[f + 1]
        t0 = table_offsets[f]
        buckets = table_offsets[f + 1] - t0 - 1
        low = lows[f]
        scale = scales[f]
        for r in range(rows):
            x = np.float64(batch[r, f])
            out[r, f] = x
            if exact[f] or g1 == g0 or not np.isfinite(x):
                continue
            k = _first_not_below(x, grid, g0, table, t0, buckets, low, scale) - 1
            while k + 1 < g1 and rounded[k + 1] <= x:
                k += 1
            if k >= g0 and rounded[k] == x:
                out[r, f] = grid[k]


@nb.njit(cache=True, nogil=True)
def summarize_cells(
    cells, cell_to_sample, cell_to_bin, sample_cum, reference, bins
):  # pragma: no cover - compiled
    """One numeric feature's window from its grid cell counts, in one pass: adds the window's
    bin counts into ``bins`` (zeroed, one per profile bin) and returns the number of values
    and the KS distance to the reference sample (NaN when either side is empty).

    ``sample_cum[j]`` counts the sample's values up to its ``j``-th distinct value;
    ``cell_to_sample`` maps a grid cell to the sample's gap cell ``2j`` (values just below
    value ``j``) or equal cell ``2j + 1``. Both CDFs are right-continuous steps, so the
    distance is largest at a sample value or just below one where the window has values.
    """
    distinct = sample_cum.shape[0]
    per_sample = np.zeros(2 * distinct + 1, dtype=np.int64)
    count = 0
    for c in range(cells.shape[0]):
        v = cells[c]
        if v != 0:
            count += v
            per_sample[cell_to_sample[c]] += v
            bins[cell_to_bin[c]] += v
    if count == 0 or reference == 0:
        return count, np.nan
    statistic = 0.0
    cum = 0
    below = 0
    for j in range(distinct):
        gap = per_sample[2 * j]
        cum += gap
        if gap > 0:
            d = abs(below / reference - cum / count)
            if d > statistic:
                statistic = d
        cum += per_sample[2 * j + 1]
        d = abs(sample_cum[j] / reference - cum / count)
        if d > statistic:
            statistic = d
        below = sample_cum[j]
    return count, statistic


def frozen(batch: np.ndarray) -> np.ndarray:
    """A read-only view of ``batch`` (no copy). Numba compiles a kernel once per argument
    type, and whether an array is writable is part of its type: batches decoded from request
    bytes are read-only, others are not, so the counting kernels are always handed read-only
    views and compile (and warm up) once per float type."""
    view = batch.view()
    view.flags.writeable = False
    return view


def warm_scoring() -> None:
    """Compile :func:`summarize_cells` for the types the reports pass (a no-op once done)."""
    one = np.zeros(1, np.int64)
    summarize_cells(one, one, one, one[:0], 0, np.zeros(1, np.int64))
