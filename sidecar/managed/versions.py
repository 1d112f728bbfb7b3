"""Model versions of a deployment: loading them, and the routing table that serves them.

:class:`VersionLoader` makes a :class:`LoadedVersion` from a ``ServedVersion`` of the desired
state: the artifact is fetched and verified through the cache, opened in ONNX Runtime and
warmed up; the version's baseline profile (when it has one) is fetched the same way and
turns drift monitoring on for that version, unless the model's inputs do not provide the
features it profiles: the version then serves with drift off, logged once with the reason,
which the admin drift report answers (FAILED_PRECONDITION, DRIFT_OFF). With a metrics
registry each version binds its own Prometheus series (model = the deployment, version = its
number), dropped again when the version is released. :class:`RoutingTable` is an immutable
snapshot of what serves now; the server replaces it with one reference assignment, so a
request sees either the old table or the new one, and finishes on the version it started with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from prometheus_client import CollectorRegistry

from modelplane.errors import FailedPrecondition
from modelplane.profiles import BaselineProfile
from modelplane.v1 import deployments_pb2 as dpb
from sidecar import runtime as rt
from sidecar.codec import Limits
from sidecar.drift import DriftMonitor, DriftReport, WindowState
from sidecar.driftfeed import DriftFeed, DriftGauges, FeatureSource, column_names, thresholds_of
from sidecar.managed.artifacts import ArtifactCache
from sidecar.managed.compare import OutputRule, warm_kernels
from sidecar.managed.router import Splitter
from sidecar.metrics import NoMetrics, SidecarMetrics
from sidecar.model import ServingModel
from sidecar.observers import BatchRecord, ObserverHub, RejectedRecord
from sidecar.observing import feature_names
from sidecar.predlog.records import FeatureNames
from sidecar.recording import output_shapes
from sidecar.settings import SidecarSettings
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar.managed")

CHAMPION, CANDIDATE, SHADOW = "champion", "candidate", "shadow"
DEFAULT_REPORT_INTERVAL = 2.0
DEFAULT_TOLERANCE = 0.1


@dataclass(eq=False)
class LoadedVersion:
    """One loaded model version with what observes it."""

    number: int
    label: str
    artifact_sha256: str
    baseline_sha256: str
    model: ServingModel
    rule: OutputRule
    feature_names: FeatureNames
    #: Drift windows of the admin RPC (None without a baseline).
    drift: DriftFeed | None = None
    #: Report-window drift counts (None without a baseline).
    window_drift: DriftMonitor | None = None
    source: FeatureSource | None = None
    #: Why drift is not monitored although the version has a baseline ("" when it is, or
    #: when there is none).
    drift_off: str = ""
    #: The role in the newest routing table that included this version.
    arm: str = CHAMPION
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    in_flight: int = 0
    #: Set once the version is unloaded (its records may still wait for the observer).
    released: bool = False

    def enter(self) -> None:
        """A request starts on this version."""
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        """A request on this version finished."""
        with self._lock:
            self.in_flight -= 1

    def assign(self, arm: str) -> None:
        """Give the version its role in a new routing table (logs and metrics follow)."""
        self.arm = arm
        if self.model.sync_log is not None:
            self.model.sync_log.arm = arm
        self.model.metrics.set_arm(arm)

    def release(self) -> None:
        """The version is unloaded: drop its Prometheus series, end its session thread."""
        self.released = True
        self.model.metrics.close()
        self.model.runtime.close()
        if self.drift is not None and self.drift.gauges is not None:
            self.drift.gauges.close()

    def take_drift(self) -> WindowState | None:
        """The report window's drift counts so far, starting a new window."""
        return None if self.window_drift is None else self.window_drift.flush()


@dataclass(slots=True)
class Served:
    """A record one loaded version published (see :class:`VersionPublisher`)."""

    record: BatchRecord | RejectedRecord
    #: The version that answered; it may have been released by the time the observer sees it.
    version: LoadedVersion
    #: The arm it answered as.
    arm: str


class VersionPublisher:
    """The observer hub as one version's :class:`ServingModel` sees it: every record the model
    publishes (served batches, refused requests) goes to the hub as :class:`Served`, with the
    version and the arm it holds at that moment. The observer then never looks a version up by
    its label, which a version released while its records still waited in the hub no longer
    has, and which a replaced artifact shares with its successor."""

    def __init__(self, hub: ObserverHub) -> None:
        self._hub = hub
        #: The version the records are of (set once it is built, before it serves).
        self.version: LoadedVersion | None = None

    @property
    def active(self) -> bool:
        """Whether anyone listens (see :attr:`ObserverHub.active`)."""
        return self._hub.active

    @property
    def needs_ids(self) -> bool:
        """Whether an observer reads request ids (see :attr:`ObserverHub.needs_ids`)."""
        return self._hub.needs_ids

    @property
    def lossless(self) -> bool:
        """Whether publishing waits for room (see :attr:`ObserverHub.lossless`)."""
        return self._hub.lossless

    def publish(self, record: BatchRecord | RejectedRecord, *, wait: bool = True) -> None:
        """Hand ``record`` to the hub with its version and that version's arm (see
        :meth:`ObserverHub.publish` for ``wait``)."""
        version = self.version
        if version is not None:
            self._hub.publish(Served(record, version, version.arm), wait=wait)  # type: ignore[arg-type]


#: Rollout states after which windows belong to no rollout.
ENDED = frozenset(
    {dpb.ROLLOUT_STATE_PROMOTED, dpb.ROLLOUT_STATE_ROLLED_BACK, dpb.ROLLOUT_STATE_ABORTED}
)


@dataclass(frozen=True, eq=False)
class RoutingTable:
    """What serves now: the champion, the candidate and how traffic splits between them."""

    name: str
    generation: int
    rollout_id: str
    champion: LoadedVersion
    candidate: LoadedVersion | None
    splitter: Splitter
    report_interval: float
    tolerance: float
    #: Version label -> version, for pinned requests.
    by_label: dict[str, LoadedVersion]
    #: Versions of the desired state that could not be loaded and are left out (number ->
    #: why); the manager keeps retrying them.
    unloaded: dict[int, str] = field(default_factory=dict)
    #: The rollout windows are reported under: the desired state's while it is in progress,
    #: "" once it has ended (the state still names the last rollout).
    report_rollout_id: str = ""
    #: The desired state's ``create_time`` (a protobuf Timestamp; None from control planes
    #: that do not send it): reports say which deployment of the name they were counted under.
    create_time: Any = None

    @property
    def shadow(self) -> LoadedVersion | None:
        """The version answering copies of champion traffic, if any."""
        return self.candidate if self.splitter.shadows else None

    def arm_of(self, label: str) -> str:
        """The arm a version's answers belong to."""
        return CHAMPION if label == self.champion.label else CANDIDATE

    def queued_rows(self) -> int:
        """Rows waiting in the batch queues of the versions this table serves (the champion,
        the candidate answering its share or shadow copies)."""
        return sum(version.model.queued_rows for version in self.by_label.values())

    def pick(self, key: bytes | None) -> LoadedVersion:
        """The version answering ``key``."""
        if self.candidate is not None and self.splitter.candidate(key):
            return self.candidate
        return self.champion


def _unmonitored(
    label: str, signature: Signature, profile: BaselineProfile, names: list[str] | None
) -> str:
    """Why version ``label`` cannot watch drift against ``profile``: features it lacks."""
    available = column_names(signature, names)
    missing = [n for n in profile.feature_names if n not in available]
    shown = ", ".join(missing[:10]) + (
        f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    )
    have = ", ".join(list(available)[:20]) or "no feature columns"
    return (
        f"drift monitoring is off for version {label}: its baseline profiles {shown}, which the "
        f"model's inputs do not provide (they provide {have}); the version serves without "
        "it. Register a version whose train dataset holds only the model's features (name the "
        "label column, or list the features)"
    )


class DriftOff:
    """What the admin drift report finds for a version whose drift is not monitored:
    FAILED_PRECONDITION (DRIFT_OFF) saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def current(self) -> tuple[Any, DriftReport]:
        """Refused: drift is not monitored."""
        raise FailedPrecondition(self.reason, reason="DRIFT_OFF")

    def last(self) -> tuple[Any, DriftReport] | None:
        """Refused: drift is not monitored."""
        raise FailedPrecondition(self.reason, reason="DRIFT_OFF")


def build_table(
    state: Any, loaded: dict[int, LoadedVersion], without: dict[int, str] | None = None
) -> RoutingTable:
    """The routing table of a ``DeploymentState`` whose versions are all in ``loaded``, except
    those in ``without`` (number -> why; never the champion), which it leaves out: without its
    candidate the champion answers everything and nothing is shadowed."""
    gone = dict(without or {})
    champion = loaded[state.champion_version]
    candidate = None
    if state.candidate_version and state.candidate_version not in gone:
        candidate = loaded.get(state.candidate_version)
    interval = DEFAULT_REPORT_INTERVAL
    if state.HasField("report_interval"):
        interval = state.report_interval.ToTimedelta().total_seconds() or interval
    wanted = {sv.version for sv in state.versions} | {state.champion_version}
    if candidate is not None:
        wanted.add(candidate.number)
    return RoutingTable(
        name=state.name.removeprefix("deployments/"),
        generation=state.generation,
        rollout_id=state.rollout_id,
        champion=champion,
        candidate=candidate,
        splitter=Splitter(
            state.rollout_id,
            state.candidate_percent if candidate is not None else 0.0,
            state.shadow_fraction if candidate is not None else 0.0,
        ),
        report_interval=max(0.05, interval),
        # 0 is the field unset (a control plane older than it), never a tolerance: the
        # control plane refuses a setting of 0 (controlplane.settings.regression_tolerance).
        tolerance=state.regression_tolerance or DEFAULT_TOLERANCE,
        by_label={loaded[v].label: loaded[v] for v in wanted - gone.keys() if v in loaded},
        unloaded=gone,
        report_rollout_id="" if state.rollout_state in ENDED else state.rollout_id,
        create_time=state.create_time if state.HasField("create_time") else None,
    )


def check_state(state: Any) -> str | None:
    """Why a desired state cannot be applied, or None when it can."""
    numbers = [sv.version for sv in state.versions]
    if state.champion_version not in numbers:
        return f"its champion version {state.champion_version} is not among its versions"
    if state.candidate_version and state.candidate_version not in numbers:
        return f"its candidate version {state.candidate_version} is not among its versions"
    if not 0.0 <= state.candidate_percent <= 100.0:
        return f"candidate_percent {state.candidate_percent} is outside [0, 100]"
    if not 0.0 <= state.shadow_fraction <= 1.0:
        return f"shadow_fraction {state.shadow_fraction} is outside [0, 1]"
    if any(not sv.artifact_sha256 for sv in state.versions):
        return "a version has no artifact digest"
    return None


class VersionLoader:
    """Turns a ``ServedVersion`` into a warmed-up :class:`LoadedVersion`."""

    def __init__(
        self,
        settings: SidecarSettings,
        cache: ArtifactCache,
        hub: ObserverHub,
        sync_logs: Any = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.hub = hub
        #: Where versions' Prometheus metrics go (None: metrics off).
        self.registry = registry
        #: ``sync`` log durability: makes a version's SyncLog from its feature names and
        #: output shapes (:func:`sidecar.recording.output_shapes`).
        self.sync_logs = sync_logs
        self._warm = False

    def load(self, served: Any, name: str) -> LoadedVersion:
        """Fetch, verify, open and warm up ``served``; raises on any failure."""
        s = self.settings
        if not self._warm:
            warm_kernels()
            self._warm = True
        path = self.cache.fetch(served.artifact_sha256, served.artifact_size_bytes)
        profile = None
        if served.baseline_sha256:
            profile = BaselineProfile.from_bytes(
                self.cache.fetch(served.baseline_sha256).read_bytes()
            )
        runtime = rt.load_for(s, path)
        names = feature_names(s, runtime.signature, profile)
        label = str(served.version)
        registry = self.registry
        drift = window = source = None
        drift_off = ""
        if profile is not None:
            thresholds = thresholds_of(s)
            monitor = DriftMonitor(
                profile,
                window_rows=s.drift_rows,
                window_seconds=s.drift_window,
                thresholds=thresholds,
            )
            try:
                source = FeatureSource.plan(
                    runtime.signature, profile, names, monitor.numeric_names
                )
            except FailedPrecondition:
                # The version serves all the same; only its drift goes unwatched.
                drift_off = _unmonitored(label, runtime.signature, profile, names)
                log.warning(
                    "drift monitoring off for this version",
                    deployment=name,
                    version=label,
                    reason=drift_off,
                )
            if source is not None:
                gauges = None if registry is None else DriftGauges(registry, name, label)
                drift = DriftFeed(monitor, source, gauges)
                window = DriftMonitor(profile, thresholds=thresholds)
        publisher = VersionPublisher(self.hub)
        metrics: NoMetrics = NoMetrics()
        if registry is not None:
            # The routing table that includes the version assigns its arm (see assign).
            metrics = SidecarMetrics(registry, name, label, runtime.provider, arm=CHAMPION)
        batch_rows, unbatched = rt.serving_batch_rows(s, runtime)
        try:
            model = ServingModel(
                runtime,
                name=name,
                version=label,
                limits=Limits.of(s),
                max_batch_rows=batch_rows,
                max_delay=s.max_queue_delay,
                max_queue_rows=s.max_queue_rows,
                metrics=metrics,
                # ServingModel only publishes to it and reads active and needs_ids.
                observers=cast(ObserverHub, publisher),
                sync_log=None
                if self.sync_logs is None
                else self.sync_logs(names, output_shapes(runtime.signature)),
                drift=DriftOff(drift_off) if drift_off else drift,
            )
        except BaseException:
            metrics.close()
            if drift is not None and drift.gauges is not None:
                drift.gauges.close()
            raise
        log.info(
            "version loaded",
            deployment=name,
            version=label,
            provider=runtime.provider,
            drift=drift is not None,
            batching=model.batcher is not None,
            batching_off=model.batching_off or unbatched,
        )
        loaded = LoadedVersion(
            number=served.version,
            label=label,
            artifact_sha256=served.artifact_sha256,
            baseline_sha256=served.baseline_sha256,
            model=model,
            rule=OutputRule.of(runtime.signature, path),
            feature_names=names,
            drift=drift,
            window_drift=window,
            source=source,
            drift_off=drift_off,
        )
        publisher.version = loaded
        return loaded
