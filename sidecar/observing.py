"""Wiring the prediction log and drift monitoring into a sidecar from its settings.

Feature names, for both: ``--feature-names``, else the baseline profile's names when the
model's only ``[-1, F]`` input has ``F`` columns and the profile ``F`` features, else the log's
default ``x_0..x_{F-1}``. ``--feature-names`` only names that input's columns: a training
file given as ``--baseline`` is profiled on every column but ``--baseline-label``, so that the
features the model's other inputs carry are monitored too, as with a profile file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from modelplane.errors import FailedPrecondition
from modelplane.profiles import BaselineProfile, profile_from_file
from sidecar.drift import DriftMonitor
from sidecar.driftfeed import DriftFeed, DriftGauges, DriftReports, FeatureSource, thresholds_of
from sidecar.predlog import PredictionLogSettings, PredictionLogWriter, open_prediction_log
from sidecar.recording import LogFeed, SyncLog, output_shapes
from sidecar.settings import SidecarSettings
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar")


@dataclass
class Wiring:
    """What :func:`observe` built: hub observers and the pieces the model holds."""

    observers: list[Any] = field(default_factory=list)
    lossless: bool = False
    writer: PredictionLogWriter | None = None
    sync_log: SyncLog | None = None
    drift: DriftReports | None = None


def _tabular_width(signature: Signature) -> int | None:
    tabular = [t for t in signature.inputs if t.rank == 2 and t.tail is not None]
    return tabular[0].tail_size if len(tabular) == 1 else None


def feature_names(
    settings: SidecarSettings, signature: Signature, profile: BaselineProfile | None
) -> list[str] | None:
    """The column names of the model's tabular input (None: the log's defaults)."""
    width = _tabular_width(signature)
    if settings.feature_names is not None:
        if width != len(settings.feature_names):
            have = "no single [-1, F] input" if width is None else f"{width} input columns"
            raise FailedPrecondition(
                f"--feature-names gives {len(settings.feature_names)} names, but the model has "
                f"{have}",
                reason="FEATURE_NAMES_MISMATCH",
            )
        return list(settings.feature_names)
    if profile is not None and width == len(profile.feature_names):
        return list(profile.feature_names)
    return None


def _drift(
    settings: SidecarSettings,
    signature: Signature,
    profile: BaselineProfile,
    names: list[str] | None,
    registry: Any,
) -> DriftFeed:
    monitor = DriftMonitor(
        profile,
        window_rows=settings.drift_rows,
        window_seconds=settings.drift_window,
        thresholds=thresholds_of(settings),
    )
    source = FeatureSource.plan(signature, profile, names, monitor.numeric_names)
    gauges = None
    if registry is not None:
        gauges = DriftGauges(registry, settings.served_name, settings.model_version)
    return DriftFeed(monitor, source, gauges)


def observe(
    settings: SidecarSettings,
    log_settings: PredictionLogSettings | None,
    signature: Signature,
    registry: Any,
    on_log_failure: Callable[[BaseException], Any],
) -> Wiring:
    """Open the prediction log and the drift monitor that ``settings`` ask for."""
    wiring = Wiring()
    profile = None
    if settings.baseline is not None:
        profile = profile_from_file(settings.baseline, label=settings.baseline_label)
    names = feature_names(settings, signature, profile)
    if profile is not None:
        wiring.drift = _drift(settings, signature, profile, names, registry)
        wiring.observers.append(wiring.drift)
    if log_settings is not None and log_settings.dir is not None:
        writer = open_prediction_log(log_settings, registry=registry, on_failure=on_log_failure)
        wiring.writer = writer
        shapes = output_shapes(signature)
        if log_settings.durability == "sync":
            wiring.sync_log = SyncLog(writer, names, shapes=shapes)
        else:
            wiring.observers.append(LogFeed(writer, names, shapes=shapes))
            wiring.lossless = True
    return wiring
