"""Merging window reports of several sidecar replicas, and the fields derived from the sums.

Every count adds; histograms add bucket by bucket (their layouts must agree); drift feature
counts add bin by bin (same baseline, same bins). Derived fields are computed only after the
merge, from the merged counts: ``error_rate = errors / requests``, ``accuracy = correct /
labeled``, latency p50/p99 from the merged latency histogram, and for the shadow comparison
``disagreement_rate = disagreements / pairs``, ``mean_abs_diff = abs_diff_sum / pairs``,
``ks_statistic`` = the largest distance between the CDFs of the two merged score histograms,
the shadow's latency p50/p99 from its merged latency histogram (one value per answered copy)
and ``dropped_rate = dropped / (answered + errors + dropped)``, copies answered counted in
each summary before the merge, by its latencies (by ``pairs`` in a summary without a latency
histogram, as sidecars of earlier releases send): a replica's histogram counts its own
copies only, so during a rolling upgrade the merged histogram stands for some replicas' copies.
The merged summary keeps that count (``answered``), and a sum of sums (a step's kept sum and
the next report) adds the kept counts.
A derived value whose denominator is zero is None (unknown), never 0.

Counts add as Python ints and a sum stays at :data:`~controlplane.rollouts.histograms.MAX_SUM`
(int64's largest) rather than pass it, float sums stay finite, and a merged arm keeps the
:data:`MAX_LABELS` most frequent predicted labels (ties: the smaller label), so that what is
merged, kept and stored always fits the API's messages and stays bounded however many reports
a step or window holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from controlplane.domain.deployments import (
    ArmSummary,
    DriftSummary,
    FeatureCounts,
    Histogram,
    ShadowSummary,
    WindowReport,
)
from controlplane.rollouts import histograms
from controlplane.rollouts.histograms import layout_mismatch, saturated, saturated_float

#: The most predicted labels one report may count, and a merged arm keeps.
MAX_LABELS = 1024


def _ratio(part: float, whole: float) -> float | None:
    return float(part) / whole if whole > 0 else None


def _present(items: Sequence[Histogram | None]) -> list[Histogram]:
    return [h for h in items if h is not None]


def drift_layout(d: DriftSummary) -> list[tuple[str, int]]:
    """Each feature's name and number of bins: what counts must share to be added."""
    return [(f.name, len(f.counts)) for f in d.features]


def merge_drift(items: Sequence[DriftSummary | None], what: str) -> DriftSummary | None:
    """The sum of drift counts against one baseline (None for none)."""
    present = [d for d in items if d is not None]
    if not present:
        return None
    # Reports stored before digests were kept bare may spell them "sha256:<hex>".
    first = replace(present[0], baseline_sha256=present[0].baseline_sha256.removeprefix("sha256:"))
    for other in present[1:]:
        if other.baseline_sha256.removeprefix("sha256:") != first.baseline_sha256:
            raise layout_mismatch(what, "counted against different baselines")
        if drift_layout(other) != drift_layout(first):
            raise layout_mismatch(what, "different features or bins")
    features = []
    for i, feature in enumerate(first.features):
        parts = [d.features[i] for d in present]
        features.append(
            FeatureCounts(
                name=feature.name,
                counts=tuple(saturated(b) for b in zip(*(p.counts for p in parts), strict=True)),
                out_of_range=saturated(p.out_of_range for p in parts),
                missing=saturated(p.missing for p in parts),
            )
        )
    return DriftSummary(
        baseline_sha256=first.baseline_sha256,
        rows=saturated(d.rows for d in present),
        features=tuple(features),
    )


def merge_arms(items: Sequence[ArmSummary], arm: str) -> ArmSummary | None:
    """The sum of one arm's summaries, with its derived fields (None for none)."""
    if not items:
        return None
    merged = ArmSummary(
        arm=arm,
        version=items[0].version,
        requests=saturated(a.requests for a in items),
        errors=saturated(a.errors for a in items),
        rows=saturated(a.rows for a in items),
        latency=histograms.merge(_present([a.latency for a in items]), f"{arm}.latency"),
        scores=histograms.merge(_present([a.scores for a in items]), f"{arm}.scores"),
        label_counts=merge_labels([a.label_counts for a in items]),
        drift=merge_drift([a.drift for a in items], f"{arm}.drift"),
        labeled=saturated(a.labeled for a in items),
        correct=saturated(a.correct for a in items),
    )
    return derive_arm(merged)


def merge_labels(items: Sequence[dict[int, int]]) -> dict[int, int]:
    """The summed predicted-label counts: the :data:`MAX_LABELS` most frequent labels."""
    labels: dict[int, int] = {}
    for item in items:
        for key, value in item.items():
            labels[key] = min(labels.get(key, 0) + value, histograms.MAX_SUM)
    if len(labels) <= MAX_LABELS:
        return labels
    kept = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_LABELS]
    return dict(sorted(kept))


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
        pairs=saturated(s.pairs for s in items),
        disagreements=saturated(s.disagreements for s in items),
        abs_diff_sum=saturated_float(s.abs_diff_sum for s in items),
        errors=saturated(s.errors for s in items),
        dropped=saturated(s.dropped for s in items),
        champion_scores=histograms.merge(
            _present([s.champion_scores for s in items]), "shadow.champion_scores"
        ),
        shadow_scores=histograms.merge(
            _present([s.shadow_scores for s in items]), "shadow.shadow_scores"
        ),
        latency=histograms.merge(_present([s.latency for s in items]), "shadow.latency"),
    )
    return derive_shadow(replace(merged, answered=saturated(_answered(s) for s in items)))


def _answered(s: ShadowSummary) -> int:
    """Copies ``s`` counts as answered: those a sum kept, else one per latency, else its
    pairs (a summary without latencies)."""
    if s.answered is not None:
        return s.answered
    return s.latency.total if s.latency is not None else s.pairs


def derive_shadow(s: ShadowSummary) -> ShadowSummary:
    """``s`` with disagreement rate, mean absolute difference, KS statistic, latency p50/p99
    and dropped rate computed."""
    answered = _answered(s)
    return replace(
        s,
        disagreement_rate=_ratio(s.disagreements, s.pairs),
        mean_abs_diff=_ratio(s.abs_diff_sum, s.pairs),
        ks_statistic=histograms.ks_statistic(
            s.champion_scores, s.shadow_scores, "shadow.shadow_scores"
        ),
        latency_p50=histograms.quantile(s.latency, 0.5),
        latency_p99=histograms.quantile(s.latency, 0.99),
        dropped_rate=_ratio(s.dropped, answered + s.errors + s.dropped),
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
