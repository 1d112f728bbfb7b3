"""Deployment and rollout domain objects to and from ``modelplane.v1`` deployment messages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import duration_pb2

from controlplane.api.converters import (
    SMALLEST_DURATION_SECONDS,
    kept_seconds_of,
    time_from_proto,
    ts,
)
from controlplane.domain.deployments import (
    ArmSummary,
    Deployment,
    DeploymentState,
    DriftSummary,
    DriftThresholds,
    Evidence,
    FeatureCounts,
    GuardResult,
    Histogram,
    Rollout,
    RolloutEvent,
    ShadowSummary,
    UnloadedCandidate,
    UnloadedVersion,
    WindowReport,
)
from controlplane.services.deployments import WatchedState
from modelplane.v1 import deployments_pb2 as pb


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    """``ROLLOUT_STRATEGY_BLUE_GREEN`` → ``blue_green``; "" for UNSPECIFIED."""
    try:
        name = enum.Name(value)
    except ValueError:
        return f"unknown({value})"
    short = name.removeprefix(prefix).lower()
    return "" if short == "unspecified" else short


def _enum_value(enum: Any, prefix: str, name: str) -> int:
    return int(enum.Value(f"{prefix}{(name or 'unspecified').upper()}"))


def strategy_from_proto(value: int) -> str:
    return _enum_name(pb.RolloutStrategy, "ROLLOUT_STRATEGY_", value)


def _strategy(name: str) -> Any:
    return _enum_value(pb.RolloutStrategy, "ROLLOUT_STRATEGY_", name)


def _state(name: str) -> Any:
    return _enum_value(pb.RolloutState, "ROLLOUT_STATE_", name)


def _phase(name: str) -> Any:
    return _enum_value(pb.RolloutPhase, "ROLLOUT_PHASE_", name)


#: The longest Duration protobuf's JSON mapping and other languages accept (10,000 years).
_MAX_DURATION_SECONDS = 315_576_000_000


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a Duration, kept within Duration's range (values stored before their
    bounds were checked would otherwise fail every client that prints them); a positive one
    stored shorter than 1 µs, before such were refused, is served as 1 µs rather than as 0,
    which means "the default"."""
    out = duration_pb2.Duration()
    bounded = max(-_MAX_DURATION_SECONDS, min(_MAX_DURATION_SECONDS, seconds))
    if 0 < bounded < SMALLEST_DURATION_SECONDS:
        bounded = SMALLEST_DURATION_SECONDS
    out.FromTimedelta(timedelta(seconds=bounded))
    return out


# Summaries ------------------------------------------------------------------------------------

_INT64 = (-(2**63), 2**63 - 1)


def _n(value: int) -> int:
    """A stored count as the wire's int64 can hold it (evidence merged before sums were kept
    within int64 may hold more)."""
    return min(max(value, _INT64[0]), _INT64[1])


def histogram_to_proto(h: Histogram | None) -> pb.Histogram | None:
    if h is None:
        return None
    return pb.Histogram(
        low=h.low,
        high=h.high,
        log_scale=h.log_scale,
        counts=[_n(c) for c in h.counts],
        underflow=_n(h.underflow),
        overflow=_n(h.overflow),
        sum=h.sum,
        symlog=h.symlog,
    )


def histogram_from_proto(msg: Any, present: bool) -> Histogram | None:
    if not present:
        return None
    return Histogram(
        low=msg.low,
        high=msg.high,
        log_scale=msg.log_scale,
        counts=tuple(msg.counts),
        underflow=msg.underflow,
        overflow=msg.overflow,
        sum=msg.sum,
        symlog=msg.symlog,
    ).read_legacy()


def _opt(msg: Any, field: str) -> float | None:
    return getattr(msg, field) if msg.HasField(field) else None


def drift_to_proto(d: DriftSummary | None) -> pb.DriftSummary | None:
    if d is None:
        return None
    return pb.DriftSummary(
        baseline_sha256=d.baseline_sha256,
        rows=_n(d.rows),
        features=[
            pb.FeatureCounts(
                name=f.name,
                counts=[_n(c) for c in f.counts],
                out_of_range=_n(f.out_of_range),
                missing=_n(f.missing),
            )
            for f in d.features
        ],
        max_psi=d.max_psi,
        drifted_share=d.drifted_share,
    )


def drift_from_proto(msg: pb.DriftSummary) -> DriftSummary:
    return DriftSummary(
        baseline_sha256=msg.baseline_sha256,
        rows=msg.rows,
        features=tuple(
            FeatureCounts(f.name, tuple(f.counts), f.out_of_range, f.missing) for f in msg.features
        ),
    )


def arm_to_proto(a: ArmSummary | None) -> pb.ArmSummary | None:
    if a is None:
        return None
    return pb.ArmSummary(
        arm=a.arm,
        version=a.version,
        requests=_n(a.requests),
        errors=_n(a.errors),
        rows=_n(a.rows),
        latency=histogram_to_proto(a.latency),
        scores=histogram_to_proto(a.scores),
        label_counts={k: _n(v) for k, v in a.label_counts.items()},
        drift=drift_to_proto(a.drift),
        labeled=_n(a.labeled),
        correct=_n(a.correct),
        error_rate=a.error_rate,
        latency_p50=a.latency_p50,
        latency_p99=a.latency_p99,
        accuracy=a.accuracy,
    )


def arm_from_proto(msg: pb.ArmSummary) -> ArmSummary:
    """A reported arm; the derived fields are ignored (the control plane computes them)."""
    return ArmSummary(
        arm=msg.arm,
        version=msg.version,
        requests=msg.requests,
        errors=msg.errors,
        rows=msg.rows,
        latency=histogram_from_proto(msg.latency, msg.HasField("latency")),
        scores=histogram_from_proto(msg.scores, msg.HasField("scores")),
        label_counts=dict(msg.label_counts),
        drift=drift_from_proto(msg.drift) if msg.HasField("drift") else None,
        labeled=msg.labeled,
        correct=msg.correct,
    )


def shadow_to_proto(s: ShadowSummary | None) -> pb.ShadowSummary | None:
    if s is None:
        return None
    return pb.ShadowSummary(
        version=s.version,
        pairs=_n(s.pairs),
        disagreements=_n(s.disagreements),
        abs_diff_sum=s.abs_diff_sum,
        errors=_n(s.errors),
        dropped=_n(s.dropped),
        champion_scores=histogram_to_proto(s.champion_scores),
        shadow_scores=histogram_to_proto(s.shadow_scores),
        disagreement_rate=s.disagreement_rate,
        mean_abs_diff=s.mean_abs_diff,
        ks_statistic=s.ks_statistic,
        latency=histogram_to_proto(s.latency),
        latency_p50=s.latency_p50,
        latency_p99=s.latency_p99,
        dropped_rate=s.dropped_rate,
    )


def shadow_from_proto(msg: pb.ShadowSummary) -> ShadowSummary:
    """A reported shadow comparison; the derived fields are ignored (the control plane
    computes them)."""
    return ShadowSummary(
        version=msg.version,
        pairs=msg.pairs,
        disagreements=msg.disagreements,
        abs_diff_sum=msg.abs_diff_sum,
        errors=msg.errors,
        dropped=msg.dropped,
        champion_scores=histogram_from_proto(msg.champion_scores, msg.HasField("champion_scores")),
        shadow_scores=histogram_from_proto(msg.shadow_scores, msg.HasField("shadow_scores")),
        latency=histogram_from_proto(msg.latency, msg.HasField("latency")),
    )


def guard_to_proto(g: GuardResult) -> pb.GuardResult:
    return pb.GuardResult(expression=g.expression, passed=g.passed, error=g.error, detail=g.detail)


def unloaded_to_proto(u: UnloadedCandidate) -> pb.UnloadedReplica:
    return pb.UnloadedReplica(
        replica=u.replica,
        version=u.version,
        error=u.error,
        first_report_time=ts(u.since),
        last_report_time=ts(u.last_seen),
    )


_EVIDENCE_SCOPES = {
    "window": pb.EVIDENCE_SCOPE_WINDOW,
    "step": pb.EVIDENCE_SCOPE_STEP,
    "phase": pb.EVIDENCE_SCOPE_PHASE,
}


def evidence_to_proto(e: Evidence | None) -> pb.Evidence | None:
    if e is None:
        return None
    return pb.Evidence(
        champion=arm_to_proto(e.champion),
        candidate=arm_to_proto(e.candidate),
        shadow=shadow_to_proto(e.shadow),
        guards=[guard_to_proto(g) for g in e.guards],
        window_end_time=ts(e.window_end_time) if e.window_end_time else None,
        replica_count=e.replica_count,
        step_candidate_requests=_n(e.step_candidate_requests),
        unloaded_replicas=[unloaded_to_proto(u) for u in e.unloaded],
        scope=_EVIDENCE_SCOPES[e.scope],
    )


# Deployments and rollouts ---------------------------------------------------------------------


def rollout_to_proto(r: Rollout | None) -> pb.Rollout | None:
    if r is None:
        return None
    return pb.Rollout(
        id=r.id,
        candidate_version=r.candidate_version,
        champion_version=r.champion_version,
        strategy=_strategy(r.strategy),
        steps=list(r.steps),
        split=r.split,
        shadow_fraction=r.shadow_fraction,
        step_duration=duration(r.step_duration_seconds),
        min_requests=r.min_requests,
        guards=list(r.guards),
        state=_state(r.state),
        phase=_phase(r.phase),
        step=r.step,
        candidate_percent=r.candidate_percent,
        phase_start_time=ts(r.phase_start_time),
        start_time=ts(r.start_time),
        end_time=ts(r.end_time) if r.end_time else None,
        started_by=r.started_by,
        reason=r.reason,
        evidence=_live_evidence(r),
        effective_guards=list(r.effective_guards),
    )


def _live_evidence(r: Rollout) -> pb.Evidence | None:
    """``r``'s stored evidence, with the candidate requests its current step or phase has
    counted now while it runs (a resume or an advance restarts the count before the next
    window stores new evidence)."""
    evidence = evidence_to_proto(r.evidence)
    if evidence is not None and r.end_time is None:
        evidence.step_candidate_requests = _n(r.step_candidate_requests)
    return evidence


def thresholds_to_proto(t: DriftThresholds) -> pb.DriftThresholds:
    return pb.DriftThresholds(
        max_psi=t.max_psi,
        max_drifted_share=t.max_drifted_share,
        min_rows=t.min_rows,
        cooldown=duration(t.cooldown_seconds),
    )


def thresholds_from_proto(msg: pb.DriftThresholds) -> DriftThresholds:
    """Thresholds as sent; unset ``min_rows`` and ``cooldown`` take their defaults."""
    default = DriftThresholds()
    return DriftThresholds(
        max_psi=_opt(msg, "max_psi"),
        max_drifted_share=_opt(msg, "max_drifted_share"),
        min_rows=msg.min_rows or default.min_rows,
        cooldown_seconds=kept_seconds_of(msg.cooldown, "drift_thresholds.cooldown")
        if msg.HasField("cooldown")
        else default.cooldown_seconds,
    )


def shown_webhook(url: str) -> str:
    """``url`` as shown to a caller who may not set it: its scheme and host, with the rest
    (where hooks carry their tokens: the path, the query, user info) replaced by ``…``."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/…"


def deployment_to_proto(d: Deployment, *, full_webhook: bool = True) -> pb.Deployment:
    """``d`` as a message; with ``full_webhook`` false, its webhook URL as :func:`shown_webhook`
    gives it."""
    webhook_url = d.webhook_url if full_webhook else shown_webhook(d.webhook_url)
    return pb.Deployment(
        name=d.name,
        model=d.model_name,
        description=d.description,
        labels=d.labels,
        champion_version=d.champion_version,
        guards=list(d.guards),
        drift_thresholds=thresholds_to_proto(d.drift_thresholds),
        retraining_hook=pb.RetrainingHook(
            webhook_url=webhook_url, command_configured=d.command_configured
        ),
        rollout=rollout_to_proto(d.rollout),
        generation=d.generation,
        created_by=d.created_by,
        create_time=ts(d.create_time),
        update_time=ts(d.update_time),
        etag=d.etag,
    )


def event_to_proto(e: RolloutEvent) -> pb.RolloutEvent:
    return pb.RolloutEvent(
        rollout_id=e.rollout_id,
        state=_state(e.state),
        phase=_phase(e.phase),
        step=e.step,
        candidate_percent=e.candidate_percent,
        action=e.action,
        reason=e.reason,
        actor=e.actor,
        evidence=evidence_to_proto(e.evidence),
        create_time=ts(e.create_time),
    )


def state_to_proto(s: DeploymentState) -> pb.DeploymentState:
    message = pb.DeploymentState(
        name=f"deployments/{s.deployment_id}",
        generation=s.generation,
        model=f"models/{s.model_id}",
        versions=[
            pb.ServedVersion(
                version=v.version,
                name=v.name,
                artifact_sha256=v.artifact_sha256,
                artifact_size_bytes=v.artifact_size_bytes,
                baseline_sha256=v.baseline_sha256,
            )
            for v in s.versions
        ],
        champion_version=s.champion_version,
        candidate_version=s.candidate_version,
        candidate_percent=s.candidate_percent,
        shadow_fraction=s.shadow_fraction,
        rollout_id=s.rollout_id,
        rollout_state=_state(s.rollout_state),
        phase=_phase(s.phase),
        report_interval=duration(s.report_interval_seconds),
        regression_tolerance=s.regression_tolerance,
    )
    if isinstance(s, WatchedState):
        if s.create_time is not None:
            message.create_time.CopyFrom(ts(s.create_time))
        if s.heartbeat_seconds > 0:
            message.heartbeat_interval.CopyFrom(duration(s.heartbeat_seconds))
    return message


def _time(msg: Any, field: str) -> datetime | None:
    return time_from_proto(getattr(msg, field), field) if msg.HasField(field) else None


def report_from_proto(msg: pb.ReportWindowRequest) -> WindowReport:
    return WindowReport(
        deployment_id="",
        replica=msg.replica,
        sequence=msg.sequence,
        generation=msg.generation,
        rollout_id=msg.rollout_id,
        start_time=_time(msg, "start_time"),
        end_time=_time(msg, "end_time"),
        arms=tuple(arm_from_proto(a) for a in msg.arms),
        shadow=shadow_from_proto(msg.shadow) if msg.HasField("shadow") else None,
        unloaded=tuple(UnloadedVersion(u.version, u.error) for u in msg.unloaded_versions),
        deployment_create_time=_time(msg, "deployment_create_time"),
        queued_windows=msg.queued_windows,
    )
