"""Drift of merged windows against a version's baseline profile, and when it counts as crossed.

Per feature, the PSI is :func:`modelplane.profiles.psi_from_counts` (the sidecar drift
engine's definition and epsilon) of the baseline's counts against the merged window's:

- numeric features: the profile's ``bin_counts`` against the reported counts over the same
  bins (``len(edges) + 1``, outer bins open, so every finite value is in some bin);
- categorical features: the profile's category counts (in profile order) plus one bin for
  unseen categories (0 in the baseline) against the reported counts plus ``out_of_range``.

``max_psi`` is the largest defined PSI; ``drifted_share`` the share of features that count as
drifted (:func:`drifted`): whose PSI is above the deployment's ``max_psi`` when it sets one,
else at least :data:`DRIFTED_FEATURE_PSI` (the sidecar's default PSI threshold). So a window
that crosses ``max_psi`` has at least one drifted feature, and ``max_drifted_share`` counts
the features that crossed the same PSI. Both are None when no feature's PSI is defined (an
empty window).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np

from controlplane.blobstore import Blobs
from controlplane.domain.deployments import DriftSummary, DriftThresholds, FeatureCounts
from controlplane.rollouts.histograms import layout_mismatch
from controlplane.store import Tx
from modelplane.profiles import (
    BaselineProfile,
    CategoricalFeature,
    Feature,
    NumericFeature,
    psi_from_counts,
)

#: A feature whose PSI reaches this counts as drifted when the deployment sets no ``max_psi``.
DRIFTED_FEATURE_PSI = 0.2


def drifted(psi: float | None, thresholds: DriftThresholds | None = None) -> bool:
    """Whether a feature of PSI ``psi`` (None: undefined) counts as drifted: at least
    :data:`DRIFTED_FEATURE_PSI`, or above ``thresholds.max_psi`` (the comparison
    :func:`crossed` makes) when that is set lower. A feature that fires a ``max_psi`` event is
    always among the drifted ones, and a ``max_psi`` set higher than the default leaves the
    share of drifted features (``max_drifted_share``) a check of its own."""
    if psi is None:
        return False
    if psi >= DRIFTED_FEATURE_PSI:
        return True
    return bool(
        thresholds is not None and thresholds.max_psi is not None and psi > thresholds.max_psi
    )


def _reference(feature: Feature) -> np.ndarray:
    if isinstance(feature, NumericFeature):
        return np.asarray(feature.bin_counts, dtype=np.int64)
    return np.asarray([*feature.categories.values(), 0], dtype=np.int64)


def _bins(feature: Feature) -> int:
    if isinstance(feature, NumericFeature):
        return len(feature.edges) + 1
    assert isinstance(feature, CategoricalFeature)
    return len(feature.categories)


def _current(feature: Feature, counts: FeatureCounts) -> np.ndarray:
    values = np.asarray(counts.counts, dtype=np.int64)
    if isinstance(feature, NumericFeature):
        return values
    return np.concatenate((values, [counts.out_of_range]))


def check_layout(summary: DriftSummary, profile: BaselineProfile, what: str) -> None:
    """INVALID_ARGUMENT (HISTOGRAM_LAYOUT_MISMATCH) unless every reported feature is in the
    profile with the profile's number of bins."""
    for counts in summary.features:
        try:
            feature = profile.feature(counts.name)
        except KeyError:
            raise layout_mismatch(
                what, f"feature {counts.name!r} is not in the baseline profile"
            ) from None
        if len(counts.counts) != _bins(feature):
            raise layout_mismatch(
                what,
                f"feature {counts.name!r} has {len(counts.counts)} bins; its baseline has "
                f"{_bins(feature)}",
            )
        if min(counts.counts, default=0) < 0 or counts.out_of_range < 0 or counts.missing < 0:
            raise layout_mismatch(what, f"feature {counts.name!r} has negative counts")


def feature_psi(summary: DriftSummary, profile: BaselineProfile) -> dict[str, float | None]:
    """Each reported feature's PSI against the profile (None when undefined)."""
    out: dict[str, float | None] = {}
    for counts in summary.features:
        feature = profile.feature(counts.name)
        value = psi_from_counts(_reference(feature), _current(feature, counts))
        out[counts.name] = None if math.isnan(value) else value
    return out


def score(
    summary: DriftSummary, profile: BaselineProfile, thresholds: DriftThresholds | None = None
) -> DriftSummary:
    """``summary`` with ``max_psi`` and ``drifted_share`` (features :func:`drifted` under
    ``thresholds``) filled in."""
    values = [v for v in feature_psi(summary, profile).values() if v is not None]
    if not values:
        return replace(summary, max_psi=None, drifted_share=None)
    count = sum(drifted(v, thresholds) for v in values)
    return replace(summary, max_psi=max(values), drifted_share=count / len(values))


def crossed(summary: DriftSummary | None, thresholds: DriftThresholds) -> list[str]:
    """Which thresholds ``summary`` crosses (empty when none, or too few rows to judge)."""
    if summary is None or not thresholds.enabled or summary.rows < thresholds.min_rows:
        return []
    out = []
    if (
        thresholds.max_psi is not None
        and summary.max_psi is not None
        and summary.max_psi > thresholds.max_psi
    ):
        out.append(f"max_psi {summary.max_psi:.4g} > {thresholds.max_psi:g}")
    if (
        thresholds.max_drifted_share is not None
        and summary.drifted_share is not None
        and summary.drifted_share > thresholds.max_drifted_share
    ):
        out.append(f"drifted_share {summary.drifted_share:.4g} > {thresholds.max_drifted_share:g}")
    return out


def drift_report(
    summary: DriftSummary,
    profile: BaselineProfile,
    reasons: list[str],
    thresholds: DriftThresholds,
) -> dict[str, Any]:
    """The per-feature part of a drift event's JSON (features :func:`drifted` under
    ``thresholds``)."""
    psi = feature_psi(summary, profile)
    return {
        "baseline_sha256": summary.baseline_sha256,
        "rows": summary.rows,
        "max_psi": summary.max_psi,
        "drifted_share": summary.drifted_share,
        "crossed": reasons,
        "features": [
            {
                "name": f.name,
                "psi": psi.get(f.name),
                "drifted": drifted(psi.get(f.name), thresholds),
                "missing": f.missing,
                "out_of_range": f.out_of_range,
            }
            for f in summary.features
        ],
    }


class ProfileCache:
    """Baseline profiles read from the blob store by digest, a bounded number kept parsed."""

    def __init__(self, blobs: Blobs, size: int = 32) -> None:
        self.blobs = blobs
        self.size = size
        self._items: OrderedDict[str, BaselineProfile | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> BaselineProfile | None:
        """The profile stored under ``sha256``; None when it is absent or unreadable."""
        if not sha256:
            return None
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        try:
            profile: BaselineProfile | None = BaselineProfile.from_dict(
                json.loads(self.blobs.read_bytes(sha256))
            )
        except Exception:
            profile = None
        with self._lock:
            self._items[sha256] = profile
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return profile


class Baselines:
    """The baseline digest and profile of a model's versions, each version read once: one
    report's layout check, scoring and drift windows ask for the same versions."""

    def __init__(self, tx: Tx, model_id: str, profiles: ProfileCache) -> None:
        self._tx = tx
        self._model_id = model_id
        self._profiles = profiles
        self._known: dict[int, tuple[str, BaselineProfile | None]] = {}

    def __call__(self, version: int) -> tuple[str, BaselineProfile | None]:
        """Version ``version``'s baseline digest ("" for none) and its profile (None when it
        has none, or the blob is absent or unreadable)."""
        if version not in self._known:
            v = self._tx.versions.get(self._model_id, version)
            sha = v.baseline.sha256 if v is not None and v.baseline else ""
            self._known[version] = (sha, self._profiles.get(sha))
        return self._known[version]
