"""Merging window reports of several sidecar replicas, and the fields derived from the sums.

Every count adds; histograms add bucket by bucket (their layouts must agree); drift feature
counts add bin by bin (same baseline, same bins). Derived fields are computed only after the
merge, from the merged counts: ``error_rate = errors / requests``, ``accuracy = correct /
labeled``, latency p50/p99 from the merged latency histogram, and for the shadow comparison
``disagreement_rate = disagreements / pairs``, ``mean_abs_diff = abs_diff_sum / pairs`` and
``ks_statistic`` = the largest distance between the CDFs of the two merged score histograms.
A derived value whose denominator is zero is None (unknown), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from controlplane.domain.deployments import (
    ArmSummary,
    DriftSummary,
    FeatureCounts,
    Histogram,
    ShadowSummary,
    WindowReport,
)
from controlplane.rollouts import histograms
from controlplane.rollouts.histograms import layout_mismatch


def _ratio(part: float, whole: float) -> float | None:
    return float(part) / whole if whole > 0 else None


def _present(items: Sequence[Histogram | None]) -> list[Histogram]:
    return [h for h in items if h is not None]


def merge_drift(items: Sequence[DriftSummary | None], what: str) -> DriftSummary | None:
    """The sum of drift counts against one baseline (None for none)."""
    present = [d for d in items if d is not None]
    if not present:
        return None
    first = present[0]
    for other in present[1:]:
        if other.baseline_sha256 != first.baseline_sha256:
            raise layout_mismatch(what, "counted against different baselines")
        if [f.name for f in other.features] != [f.name for f in first.features] or [
            len(f.counts) for f in other.features
        ] != [len(f.counts) for f in first.features]:
            raise layout_mismatch(what, "different features or bins")
    features = []
    for i, feature in enumerate(first.features):
        parts = [d.features[i] for d in present]
        counts = np.sum([np.asarray(p.counts, dtype=np.int64) for p in parts], axis=0)
        features.append(
            FeatureCounts(
                name=feature.name,
                counts=tuple(int(c) for c in np.atleast_1d(counts)),
                out_of_range=sum(p.out_of_range for p in parts),
                missing=sum(p.missing for p in parts),
            )
        )
    return DriftSummary(
        baseline_sha256=first.baseline_sha256,
        rows=sum(d.rows for d in present),
        features=tuple(features),
    )


def merge_arms(items: Sequence[ArmSummary], arm: str) -> ArmSummary | None:
    """The sum of one arm's summaries, with its derived fields (None for none)."""
    if not items:
        return None
    labels: dict[int, int] = {}
    for item in items:
        for key, value in item.label_counts.items():
            labels[key] = labels.get(key, 0) + value
    merged = ArmSummary(
        arm=arm,
        version=items[0].version,
        requests=sum(a.requests for a in items),
        errors=sum(a.errors for a in items),
        rows=sum(a.rows for a in items),
        latency=histograms.merge(_present([a.latency for a in items]), f"{arm}.latency"),
        scores=histograms.merge(_present([a.scores for a in items]), f"{arm}.scores"),
        label_counts=labels,
        drift=merge_drift([a.drift for a in items], f"{arm}.drift"),
        labeled=sum(a.labeled for a in items),
        correct=sum(a.correct for a in items),
    )
    return derive_arm(merged)


def derive_arm(a: ArmSummary) -> ArmSummary:
    """``a`` with error rate, latency p50/p99 and accuracy computed from its counts."""
    return replace(
        a,
        error_rate=_ratio(a.errors, a.requests),
        latency_p50=histograms.quantile(a.latency, 0.5),
        latency_p99=histograms.quantile(a.latency, 0.99),
        accuracy=_ratio(a.correct, a.labeled),
    )


def merge_shadow(items: Sequence[ShadowSummary]) -> ShadowSummary | None:
    """The sum of shadow comparisons, with its derived fields (None for none)."""
    if not items:
        return None
    merged = ShadowSummary(
        version=items[0].version,
        pairs=sum(s.pairs for s in items),
        disagreements=sum(s.disagreements for s in items),
        abs_diff_sum=float(sum(s.abs_diff_sum for s in items)),
        errors=sum(s.errors for s in items),
        dropped=sum(s.dropped for s in items),
        champion_scores=histograms.merge(
            _present([s.champion_scores for s in items]), "shadow.champion_scores"
        ),
        shadow_scores=histograms.merge(
            _present([s.shadow_scores for s in items]), "shadow.shadow_scores"
        ),
    )
    return derive_shadow(merged)


def derive_shadow(s: ShadowSummary) -> ShadowSummary:
    """``s`` with disagreement rate, mean absolute difference and KS statistic computed."""
    return replace(
        s,
        disagreement_rate=_ratio(s.disagreements, s.pairs),
        mean_abs_diff=_ratio(s.abs_diff_sum, s.pairs),
        ks_statistic=histograms.ks_statistic(
            s.champion_scores, s.shadow_scores, "shadow.shadow_scores"
        ),
    )


def merge_reports(
    reports: Sequence[WindowReport], versions: dict[str, int] | None = None
) -> tuple[ArmSummary | None, ArmSummary | None, ShadowSummary | None]:
    """The merged champion, candidate and shadow summaries of ``reports``.

    With ``versions`` (arm → version), summaries of another version are left out (a replica
    still serving an older desired state).
    """

    def wanted(arm: str, version: int) -> bool:
        return versions is None or versions.get(arm) == version

    arms: dict[str, list[ArmSummary]] = {"champion": [], "candidate": []}
    shadows: list[ShadowSummary] = []
    for report in reports:
        for a in report.arms:
            if a.arm in arms and wanted(a.arm, a.version):
                arms[a.arm].append(a)
        if report.shadow is not None and wanted("candidate", report.shadow.version):
            shadows.append(report.shadow)
    return (
        merge_arms(arms["champion"], "champion"),
        merge_arms(arms["candidate"], "candidate"),
        merge_shadow(shadows),
    )
