"""SQLModel tables of deployments, rollouts, rollout events and window reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controlplane.store.tables import _json, _ts


class DeploymentRow(SQLModel, table=True):
    """A deployment; ``revision`` makes the etag, ``generation`` counts desired-state changes."""

    __tablename__ = "deployments"

    id: str = Field(primary_key=True, max_length=63)
    model_id: str = Field(max_length=63, index=True)
    description: str = ""
    labels: dict[str, str] = _json()
    champion_version: int = Field(sa_type=BigInteger)
    guards: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    drift_thresholds: dict[str, Any] = _json()
    webhook_url: str = ""
    generation: int = Field(default=1, sa_type=BigInteger)
    rollout_id: str = Field(default="", max_length=63)
    last_drift_time: datetime | None = _ts(nullable=True)
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)
    update_time: datetime = _ts(nullable=False)
    revision: int = 1


class RolloutRow(SQLModel, table=True):
    """One rollout of a deployment (the current one is named by the deployment row)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    deployment_id: str = Field(primary_key=True, max_length=63)
    id: str = Field(primary_key=True, max_length=63)
    candidate_version: int = Field(sa_type=BigInteger)
    champion_version: int = Field(sa_type=BigInteger)
    strategy: str = Field(max_length=16)
    steps: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    split: float = 0.0
    shadow_fraction: float = 0.0
    step_duration_seconds: float = 60.0
    min_requests: int = Field(default=100, sa_type=BigInteger)
    guards: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(max_length=16)
    phase: str = Field(max_length=16)
    step: int = 0
    candidate_percent: float = 0.0
    phase_start_time: datetime = _ts(nullable=False)
    start_time: datetime = _ts(nullable=False)
    end_time: datetime | None = _ts(nullable=True)
    started_by: str = ""
    reason: str = ""
    step_generation: int = Field(default=0, sa_type=BigInteger)
    step_candidate_requests: int = Field(default=0, sa_type=BigInteger)
    evidence: dict[str, Any] = _json()
    champion_reference: dict[str, Any] = _json()
    #: The running sum of the current step's reports (:mod:`controlplane.rollouts.step_sum`).
    step_sum: dict[str, Any] = _json()
    #: The champion's summed windows from before the rollout, once a step needed them.
    champion_before: dict[str, Any] = _json()


class RolloutEventRow(SQLModel, table=True):
    """One transition of a rollout with its evidence."""

    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_deployment", "deployment_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: str = Field(max_length=63)
    rollout_id: str = Field(max_length=63)
    state: str = Field(max_length=16)
    phase: str = Field(max_length=16)
    step: int = 0
    candidate_percent: float = 0.0
    action: str = Field(max_length=32)
    reason: str = ""
    actor: str = ""
    evidence: dict[str, Any] = _json()
    create_time: datetime = _ts(nullable=False)


class WindowReportRow(SQLModel, table=True):
    """One replica's report of one window, as received."""

    __tablename__ = "window_reports"
    __table_args__ = (
        UniqueConstraint("deployment_id", "replica", "sequence", name="uq_window_reports_seq"),
        Index("ix_window_reports_recent", "deployment_id", "rollout_id", "receive_time"),
    )

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: str = Field(max_length=63)
    replica: str = Field(max_length=200)
    sequence: int = Field(sa_type=BigInteger)
    generation: int = Field(sa_type=BigInteger)
    rollout_id: str = Field(default="", max_length=63)
    start_time: datetime | None = _ts(nullable=True)
    end_time: datetime | None = _ts(nullable=True)
    receive_time: datetime = _ts(nullable=False)
    body: dict[str, Any] = _json()


class DriftWindowRow(SQLModel, table=True):
    """The drift counts of one arm summed over reports until they hold enough rows to judge
    (:mod:`controlplane.rollouts.drift_windows`)."""

    __tablename__ = "drift_windows"

    deployment_id: str = Field(primary_key=True, max_length=63)
    arm: str = Field(primary_key=True, max_length=16)
    version: int = Field(sa_type=BigInteger)
    #: The rollout in progress when the window opened ("" for none).
    rollout_id: str = Field(default="", max_length=63)
    baseline_sha256: str = Field(max_length=64)
    rows: int = Field(default=0, sa_type=BigInteger)
    start_time: datetime | None = _ts(nullable=True)
    end_time: datetime | None = _ts(nullable=True)
    reports: int = Field(default=0, sa_type=BigInteger)
    #: The summed :class:`~controlplane.domain.deployments.DriftSummary`.
    body: dict[str, Any] = _json()
