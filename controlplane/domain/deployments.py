"""Dataclasses for deployments, rollouts and the window summaries sidecars report.

Times are timezone-aware UTC datetimes; durations are seconds. Enumerations are lowercase
strings (``canary``, ``rolled_back``); the API converters map them to the proto enums.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

# Strategies -------------------------------------------------------------------------------------
SHADOW = "shadow"
CANARY = "canary"
AB = "ab"
BLUE_GREEN = "blue_green"
STRATEGIES = (SHADOW, CANARY, AB, BLUE_GREEN)

# Rollout states ---------------------------------------------------------------------------------
PENDING = "pending"
RUNNING = "running"
PAUSED = "paused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
STATES = (PENDING, RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED)
#: States of a rollout in progress; any other state has ended.
ACTIVE_STATES = (PENDING, RUNNING, PAUSED)

# Phases (SHADOW, CANARY and AB double as phase names) -------------------------------------------
SWITCH = "switch"
WATCH = "watch"
PHASES = ("", SHADOW, CANARY, AB, SWITCH, WATCH)
#: Phases in which the candidate answers only copies of traffic.
SHADOW_PHASES = (SHADOW,)


@dataclass(frozen=True)
class Histogram:
    """Fixed-bucket histogram; see :mod:`controlplane.rollouts.histograms` for the layout."""

    low: float
    high: float
    log_scale: bool
    counts: tuple[int, ...]
    underflow: int = 0
    overflow: int = 0
    sum: float = 0.0
    symlog: bool = False

    @property
    def layout(self) -> tuple[float, float, bool, bool, int]:
        """What two histograms must share to merge."""
        return (self.low, self.high, self.log_scale, self.symlog, len(self.counts))

    @property
    def total(self) -> int:
        """Every counted value, inside and outside the buckets."""
        return self.underflow + sum(self.counts) + self.overflow

    def read_legacy(self) -> Histogram:
        """This histogram, with the regression-score layout of sidecars that sent symlog
        buckets without the ``symlog`` flag (bounds ±12 on the scale, 240 buckets) read as the
        symlog layout it is, so their reports and the sums stored from them merge with
        current ones."""
        if self.layout != (-12.0, 12.0, False, False, 240):
            return self
        bound = 10.0**12 - 1.0
        return replace(self, low=-bound, high=bound, symlog=True)


@dataclass(frozen=True)
class FeatureCounts:
    """One feature's counts over its baseline bins (numeric) or categories (categorical)."""

    name: str
    counts: tuple[int, ...]
    out_of_range: int = 0
    missing: int = 0


@dataclass(frozen=True)
class DriftSummary:
    """An arm's drift counts in a window; ``max_psi`` and ``drifted_share`` are derived."""

    baseline_sha256: str
    rows: int
    features: tuple[FeatureCounts, ...]
    max_psi: float | None = None
    drifted_share: float | None = None


@dataclass(frozen=True)
class ArmSummary:
    """One arm's traffic in a window. Counts add; the optional floats are derived."""

    arm: str
    version: int
    requests: int = 0
    errors: int = 0
    rows: int = 0
    latency: Histogram | None = None
    scores: Histogram | None = None
    label_counts: dict[int, int] = field(default_factory=dict)
    drift: DriftSummary | None = None
    labeled: int = 0
    correct: int = 0
    error_rate: float | None = None
    latency_p50: float | None = None
    latency_p99: float | None = None
    accuracy: float | None = None


@dataclass(frozen=True)
class ShadowSummary:
    """Champion answers compared with the candidate's shadow answers; floats are derived."""

    version: int
    pairs: int = 0
    disagreements: int = 0
    abs_diff_sum: float = 0.0
    errors: int = 0
    dropped: int = 0
    champion_scores: Histogram | None = None
    shadow_scores: Histogram | None = None
    disagreement_rate: float | None = None
    mean_abs_diff: float | None = None
    ks_statistic: float | None = None
    #: Seconds per answered copy: its share, by rows, of the shadow's session call that answered it.
    latency: Histogram | None = None
    latency_p50: float | None = None
    latency_p99: float | None = None
    #: Copies dropped over copies made (answered, failed or dropped).
    dropped_rate: float | None = None
    #: Copies answered, kept by a merged summary (a sum counted them per summary, before the
    #: merge); None in one sidecar's summary, which counts them by its latencies or pairs.
    answered: int | None = None


@dataclass(frozen=True)
class UnloadedVersion:
    """A version of the desired state that a sidecar replica reported it could not load (it
    serves without it: the champion answers the candidate's share, nothing is shadowed)."""

    version: int
    error: str


@dataclass(frozen=True)
class UnloadedCandidate:
    """A replica whose latest report said it could not load the rollout's candidate."""

    replica: str
    version: int
    error: str
    #: When the replica first reported it, and when it last did.
    since: datetime
    last_seen: datetime


@dataclass(frozen=True)
class WindowReport:
    """One sidecar replica's report of one window."""

    deployment_id: str
    replica: str
    sequence: int
    generation: int
    rollout_id: str
    start_time: datetime | None
    end_time: datetime | None
    arms: tuple[ArmSummary, ...]
    shadow: ShadowSummary | None = None
    unloaded: tuple[UnloadedVersion, ...] = ()
    #: When the deployment whose desired state the sidecar applied was created (None from
    #: sidecars that do not say).
    deployment_create_time: datetime | None = None
    #: The windows the replica closed after this one and still holds to send (0 when none,
    #: and from sidecars that do not say): a step or phase does not complete meanwhile.
    queued_windows: int = 0
    #: When received (stored reports only).
    receive_time: datetime | None = None
    #: The stored report's number (0 until stored).
    id: int = 0

    def arm(self, name: str) -> ArmSummary | None:
        """The summary of arm ``name`` (``champion`` or ``candidate``), if reported."""
        return next((a for a in self.arms if a.arm == name), None)


@dataclass(frozen=True)
class GuardResult:
    """One guard's verdict on one window; ``error`` says why it was skipped or could not run."""

    expression: str
    passed: bool
    error: str = ""
    #: What the guard read, for people (``evaluated to false with candidate.error_rate=0.3``).
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True only for a guard that evaluated to false (skipped guards never fail)."""
        return not self.passed and not self.error

    def noted(self, *notes: str) -> GuardResult:
        """This result with ``notes`` added to its detail (``; `` between the non-empty parts)."""
        return replace(self, detail="; ".join(x for x in (self.detail, *notes) if x))


@dataclass(frozen=True)
class Evidence:
    """The merged latest window per arm (or the step's or phase's sum, see ``scope``), and the
    guards' verdict on it."""

    champion: ArmSummary | None = None
    candidate: ArmSummary | None = None
    shadow: ShadowSummary | None = None
    guards: tuple[GuardResult, ...] = ()
    window_end_time: datetime | None = None
    replica_count: int = 0
    step_candidate_requests: int = 0
    #: Replicas that cannot load the candidate now (kept with the stored evidence so that
    #: every report sees the other replicas' state; see :mod:`controlplane.rollouts.unloaded`).
    unloaded: tuple[UnloadedCandidate, ...] = ()
    #: What the summaries cover: ``window`` (the latest), ``step`` or ``phase`` (summed).
    scope: str = "window"


@dataclass(frozen=True)
class DriftThresholds:
    """When drift counts as crossed; None disables a check."""

    max_psi: float | None = None
    max_drifted_share: float | None = None
    min_rows: int = 200
    cooldown_seconds: float = 600.0

    @property
    def enabled(self) -> bool:
        """Whether any threshold is set."""
        return self.max_psi is not None or self.max_drifted_share is not None


@dataclass(frozen=True)
class RolloutSpec:
    """What a caller asks for when starting a rollout (defaults already applied)."""

    candidate_version: int
    strategy: str
    steps: tuple[float, ...] = ()
    split: float = 0.0
    shadow_fraction: float = 0.0
    step_duration_seconds: float = 60.0
    min_requests: int = 100
    guards: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rollout:
    """One rollout of a candidate version, as persisted."""

    id: str
    deployment_id: str
    candidate_version: int
    champion_version: int
    strategy: str
    steps: tuple[float, ...]
    split: float
    shadow_fraction: float
    step_duration_seconds: float
    min_requests: int
    guards: tuple[str, ...]
    state: str
    phase: str
    step: int
    candidate_percent: float
    phase_start_time: datetime
    start_time: datetime
    end_time: datetime | None
    started_by: str
    reason: str
    evidence: Evidence | None
    effective_guards: tuple[str, ...]
    step_candidate_requests: int = 0
    #: The champion's last merged window with traffic (used once the champion has none).
    champion_reference: ArmSummary | None = None

    @property
    def active(self) -> bool:
        """True while the rollout has not ended."""
        return self.state in ACTIVE_STATES

    @property
    def serving_shadow(self) -> bool:
        """True when the candidate receives copies of traffic now."""
        return self.active and self.phase in SHADOW_PHASES

    @property
    def effective_shadow_fraction(self) -> float:
        """Share of champion traffic copied to the candidate now."""
        return self.shadow_fraction if self.serving_shadow else 0.0


@dataclass(frozen=True)
class Deployment:
    """A model served under a stable name, with its current or last rollout."""

    id: str
    model_id: str
    description: str
    labels: dict[str, str]
    champion_version: int
    guards: tuple[str, ...]
    drift_thresholds: DriftThresholds
    webhook_url: str
    command_configured: bool
    rollout: Rollout | None
    generation: int
    created_by: str
    create_time: datetime
    update_time: datetime
    etag: str
    last_drift_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"deployments/{self.id}"

    @property
    def model_name(self) -> str:
        return f"models/{self.model_id}"

    @property
    def active_rollout(self) -> Rollout | None:
        """The rollout in progress, if any."""
        return self.rollout if self.rollout is not None and self.rollout.active else None


@dataclass(frozen=True)
class RolloutEvent:
    """One transition of a rollout, with the evidence it was based on."""

    deployment_id: str
    rollout_id: str
    state: str
    phase: str
    step: int
    candidate_percent: float
    action: str
    reason: str
    actor: str
    evidence: Evidence | None
    create_time: datetime


@dataclass(frozen=True)
class ServedVersion:
    """A version sidecars must load, with what they need to download and verify it."""

    version: int
    name: str
    artifact_sha256: str
    artifact_size_bytes: int
    baseline_sha256: str


@dataclass(frozen=True)
class DeploymentState:
    """What every sidecar of a deployment serves now."""

    deployment_id: str
    generation: int
    model_id: str
    versions: tuple[ServedVersion, ...]
    champion_version: int
    candidate_version: int
    candidate_percent: float
    shadow_fraction: float
    rollout_id: str
    rollout_state: str
    phase: str
    report_interval_seconds: float
    regression_tolerance: float
