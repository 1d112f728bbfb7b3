"""One window's drift state: mergeable counts of what the window saw.

Numeric features keep cell counts over the baseline grid (see :mod:`sidecar.drift._grid`),
categorical features category counts. Adding two states gives exactly the state of one window
over both sets of rows, so windows from several replicas combine without loss - with one
bound: categories the baseline never saw are kept by name up to :data:`MAX_UNSEEN` per
feature. Past it a merge keeps the most frequent names (ties by name) and folds the rest into
:data:`OVERFLOW_CATEGORY`, so its result does not depend on which window comes first and
every total stays exact, but which names keep a count of their own can depend on how the
windows were grouped (a name folded in one merge is not split out again). Reports score all
unseen categories as one bin, so no statistic depends on that grouping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.drift._grid import BaselineGrid

WINDOW_FORMAT = "modelplane.drift-window"
WINDOW_VERSION = 1

#: Distinct unseen categories kept by name per feature and window; further new names are
#: counted together under :data:`OVERFLOW_CATEGORY`.
MAX_UNSEEN = 1000
OVERFLOW_CATEGORY = "__other__"


def _fold(unseen: dict[str, int]) -> dict[str, int]:
    """``unseen`` with at most :data:`MAX_UNSEEN` names: the most frequent kept (ties by
    name), the others' counts added to :data:`OVERFLOW_CATEGORY`."""
    named = len(unseen) - (OVERFLOW_CATEGORY in unseen)
    if named <= MAX_UNSEEN:
        return unseen
    overflow = unseen.pop(OVERFLOW_CATEGORY, 0)
    ranked = sorted(unseen.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:MAX_UNSEEN])
    kept[OVERFLOW_CATEGORY] = overflow + sum(count for _, count in ranked[MAX_UNSEEN:])
    return kept


@dataclass(eq=False)
class WindowState:
    """Counts of one window against one baseline (identified by the profile digest).

    ``cells`` holds every numeric feature's grid-cell counts back to back;
    ``missing`` the NaN, infinite and null counts per numeric feature; ``categories`` the
    count per known category (profile order) of each categorical feature, ``unseen`` the
    counts of categories absent from the baseline and ``categorical_missing`` the nulls.
    ``start`` and ``end`` are wall-clock seconds (``end`` is set when the window closes).
    """

    baseline: str
    rows: int
    start: float
    end: float | None
    cells: np.ndarray
    missing: np.ndarray
    categories: list[np.ndarray]
    unseen: list[dict[str, int]]
    categorical_missing: np.ndarray
    _index: list[dict[str, int]] = field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, grid: BaselineGrid, start: float) -> WindowState:
        """A window with no rows yet."""
        return cls(
            baseline=grid.digest,
            rows=0,
            start=start,
            end=None,
            cells=np.zeros(int(grid.cell_offsets[-1]), dtype=np.int64),
            missing=np.zeros(len(grid.numeric), dtype=np.int64),
            categories=[np.zeros(len(f.categories), dtype=np.int64) for f in grid.categorical],
            unseen=[{} for _ in grid.categorical],
            categorical_missing=np.zeros(len(grid.categorical), dtype=np.int64),
        )

    def add_categories(self, grid: BaselineGrid, position: int, counts: Mapping[str, int]) -> None:
        """Add category counts of categorical feature number ``position``."""
        if not self._index:
            self._index = [
                {name: i for i, name in enumerate(f.categories)} for f in grid.categorical
            ]
        index = self._index[position]
        known = self.categories[position]
        unseen = self.unseen[position]
        for name, count in counts.items():
            slot = index.get(name)
            if slot is not None:
                known[slot] += count
            elif name in unseen or len(unseen) < MAX_UNSEEN:
                unseen[name] = unseen.get(name, 0) + count
            else:
                unseen[OVERFLOW_CATEGORY] = unseen.get(OVERFLOW_CATEGORY, 0) + count

    def merge(self, other: WindowState) -> WindowState:
        """A new state holding both windows' counts; both must share the baseline.

        The merged window spans from the earlier start to the later end. ``a.merge(b)``
        equals ``b.merge(a)``; past :data:`MAX_UNSEEN` unseen names, see the module's
        docstring.
        """
        if other.baseline != self.baseline:
            raise ValueError(
                f"cannot merge windows over different baselines ({self.baseline} and "
                f"{other.baseline})"
            )
        if self.cells.shape != other.cells.shape or len(self.categories) != len(other.categories):
            raise ValueError("cannot merge windows of different shapes")
        unseen: list[dict[str, int]] = []
        for mine, theirs in zip(self.unseen, other.unseen, strict=True):
            combined = dict(mine)
            for name, count in theirs.items():
                combined[name] = combined.get(name, 0) + count
            unseen.append(_fold(combined))
        ends = [e for e in (self.end, other.end) if e is not None]
        return WindowState(
            baseline=self.baseline,
            rows=self.rows + other.rows,
            start=min(self.start, other.start),
            end=max(ends) if ends else None,
            cells=self.cells + other.cells,
            missing=self.missing + other.missing,
            categories=[a + b for a, b in zip(self.categories, other.categories, strict=True)],
            unseen=unseen,
            categorical_missing=self.categorical_missing + other.categorical_missing,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; numeric cells are stored sparsely (non-zero cells only)."""
        nonzero = np.flatnonzero(self.cells)
        return {
            "format": WINDOW_FORMAT,
            "version": WINDOW_VERSION,
            "baseline": self.baseline,
            "rows": int(self.rows),
            "start": float(self.start),
            "end": None if self.end is None else float(self.end),
            "cell_count": len(self.cells),
            "cells": {
                "index": nonzero.tolist(),
                "count": self.cells[nonzero].tolist(),
            },
            "missing": self.missing.tolist(),
            "categories": [c.tolist() for c in self.categories],
            "unseen": [dict(sorted(u.items())) for u in self.unseen],
            "categorical_missing": self.categorical_missing.tolist(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> WindowState:
        """Rebuild a state from :meth:`to_dict`'s output; ValueError when malformed."""
        if doc.get("format") != WINDOW_FORMAT or doc.get("version") != WINDOW_VERSION:
            raise ValueError(f"not a {WINDOW_FORMAT} version {WINDOW_VERSION} document")
        try:
            cells = np.zeros(int(doc["cell_count"]), dtype=np.int64)
            index = np.asarray(doc["cells"]["index"], dtype=np.int64)
            cells[index] = np.asarray(doc["cells"]["count"], dtype=np.int64)
            return cls(
                baseline=str(doc["baseline"]),
                rows=int(doc["rows"]),
                start=float(doc["start"]),
                end=None if doc["end"] is None else float(doc["end"]),
                cells=cells,
                missing=np.asarray(doc["missing"], dtype=np.int64),
                categories=[np.asarray(c, dtype=np.int64) for c in doc["categories"]],
                unseen=[{str(k): int(v) for k, v in u.items()} for u in doc["unseen"]],
                categorical_missing=np.asarray(doc["categorical_missing"], dtype=np.int64),
            )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"malformed drift window: {type(err).__name__}: {err}") from err

    def to_bytes(self) -> bytes:
        """Compact JSON bytes of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowState:
        """Parse :meth:`to_bytes` output; ValueError when malformed."""
        return cls.from_dict(json.loads(data))
