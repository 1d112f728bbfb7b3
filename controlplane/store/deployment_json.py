"""Window summaries and evidence to and from the JSON kept in the deployment tables."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from controlplane.domain.deployments import (
    ArmSummary,
    DriftSummary,
    DriftThresholds,
    Evidence,
    FeatureCounts,
    GuardResult,
    Histogram,
    ShadowSummary,
    UnloadedCandidate,
)
from controlplane.store.convert import utc


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """A JSON-ready form of a summary dataclass (None stays None)."""
    return None if value is None else _plain(asdict(value))


def histogram(d: dict[str, Any] | None) -> Histogram | None:
    if not d:
        return None
    return Histogram(
        low=float(d["low"]),
        high=float(d["high"]),
        log_scale=bool(d["log_scale"]),
        counts=tuple(int(c) for c in d["counts"]),
        underflow=int(d.get("underflow", 0)),
        overflow=int(d.get("overflow", 0)),
        sum=float(d.get("sum", 0.0)),
        symlog=bool(d.get("symlog", False)),
    ).read_legacy()


def drift(d: dict[str, Any] | None) -> DriftSummary | None:
    if not d:
        return None
    return DriftSummary(
        baseline_sha256=str(d["baseline_sha256"]),
        rows=int(d["rows"]),
        features=tuple(
            FeatureCounts(
                name=str(f["name"]),
                counts=tuple(int(c) for c in f["counts"]),
                out_of_range=int(f.get("out_of_range", 0)),
                missing=int(f.get("missing", 0)),
            )
            for f in d.get("features", [])
        ),
        max_psi=d.get("max_psi"),
        drifted_share=d.get("drifted_share"),
    )


def arm(d: dict[str, Any] | None) -> ArmSummary | None:
    if not d:
        return None
    return ArmSummary(
        arm=str(d["arm"]),
        version=int(d["version"]),
        requests=int(d.get("requests", 0)),
        errors=int(d.get("errors", 0)),
        rows=int(d.get("rows", 0)),
        latency=histogram(d.get("latency")),
        scores=histogram(d.get("scores")),
        label_counts={int(k): int(v) for k, v in (d.get("label_counts") or {}).items()},
        drift=drift(d.get("drift")),
        labeled=int(d.get("labeled", 0)),
        correct=int(d.get("correct", 0)),
        error_rate=d.get("error_rate"),
        latency_p50=d.get("latency_p50"),
        latency_p99=d.get("latency_p99"),
        accuracy=d.get("accuracy"),
    )


def shadow(d: dict[str, Any] | None) -> ShadowSummary | None:
    if not d:
        return None
    return ShadowSummary(
        version=int(d["version"]),
        pairs=int(d.get("pairs", 0)),
        disagreements=int(d.get("disagreements", 0)),
        abs_diff_sum=float(d.get("abs_diff_sum", 0.0)),
        errors=int(d.get("errors", 0)),
        dropped=int(d.get("dropped", 0)),
        champion_scores=histogram(d.get("champion_scores")),
        shadow_scores=histogram(d.get("shadow_scores")),
        disagreement_rate=d.get("disagreement_rate"),
        mean_abs_diff=d.get("mean_abs_diff"),
        ks_statistic=d.get("ks_statistic"),
        latency=histogram(d.get("latency")),
        latency_p50=d.get("latency_p50"),
        latency_p99=d.get("latency_p99"),
        dropped_rate=d.get("dropped_rate"),
        answered=None if d.get("answered") is None else int(d["answered"]),
    )


def unloaded(items: list[dict[str, Any]] | None) -> tuple[UnloadedCandidate, ...]:
    """The replicas kept with stored evidence as unable to load the candidate."""
    return tuple(
        UnloadedCandidate(
            replica=str(u["replica"]),
            version=int(u["version"]),
            error=str(u.get("error", "")),
            since=utc(datetime.fromisoformat(u["since"])),
            last_seen=utc(datetime.fromisoformat(u["last_seen"])),
        )
        for u in items or []
    )


def evidence(d: dict[str, Any] | None) -> Evidence | None:
    if not d:
        return None
    end = d.get("window_end_time")
    return Evidence(
        champion=arm(d.get("champion")),
        candidate=arm(d.get("candidate")),
        shadow=shadow(d.get("shadow")),
        guards=tuple(
            GuardResult(
                str(g["expression"]),
                bool(g["passed"]),
                str(g.get("error", "")),
                str(g.get("detail", "")),
            )
            for g in d.get("guards", [])
        ),
        window_end_time=utc(datetime.fromisoformat(end)) if end else None,
        replica_count=int(d.get("replica_count", 0)),
        step_candidate_requests=int(d.get("step_candidate_requests", 0)),
        unloaded=unloaded(d.get("unloaded")),
        scope=str(d.get("scope", "window")),
    )


def thresholds(d: dict[str, Any] | None) -> DriftThresholds:
    d = d or {}
    return DriftThresholds(
        max_psi=d.get("max_psi"),
        max_drifted_share=d.get("max_drifted_share"),
        min_rows=int(d.get("min_rows", 200)),
        cooldown_seconds=float(d.get("cooldown_seconds", 600.0)),
    )
