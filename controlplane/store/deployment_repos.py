"""The SQL behind deployments, rollouts, rollout events, window reports and drift windows.

Works on the session of any :class:`~controlplane.store.Tx`: ``Deployments(tx.session)``.
Transitions are compare-and-set on the deployment's ``revision``: of two replicas applying
the same transition, exactly one update matches and the other sees ``False``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.domain.deployments import (
    ACTIVE_STATES,
    RUNNING,
    Deployment,
    Rollout,
    RolloutEvent,
    WindowReport,
)
from controlplane.rollouts.guards import effective_guards
from controlplane.store import convert
from controlplane.store import deployment_json as dj
from controlplane.store.deployment_tables import (
    DeploymentRow,
    DriftWindowRow,
    RolloutEventRow,
    RolloutRow,
    WindowReportRow,
)
from controlplane.store.repos import scan_by_id, stale_etag


def deployment_etag(row: DeploymentRow) -> str:
    """The etag of a deployment row."""
    return convert.etag(f"deployments/{row.id}", row.revision, row.create_time)


def rollout(row: RolloutRow, deployment_guards: list[str]) -> Rollout:
    """The domain rollout of a row; its effective guards follow the current phase."""
    return Rollout(
        id=row.id,
        deployment_id=row.deployment_id,
        candidate_version=row.candidate_version,
        champion_version=row.champion_version,
        strategy=row.strategy,
        steps=tuple(float(s) for s in row.steps),
        split=row.split,
        shadow_fraction=row.shadow_fraction,
        step_duration_seconds=row.step_duration_seconds,
        min_requests=row.min_requests,
        guards=tuple(row.guards),
        state=row.state,
        phase=row.phase,
        step=row.step,
        candidate_percent=row.candidate_percent,
        phase_start_time=convert.utc(row.phase_start_time),
        start_time=convert.utc(row.start_time),
        end_time=convert.utc(row.end_time) if row.end_time else None,
        started_by=row.started_by,
        reason=row.reason,
        evidence=dj.evidence(row.evidence),
        effective_guards=effective_guards(deployment_guards, row.guards, row.phase),
        step_candidate_requests=row.step_candidate_requests,
        champion_reference=dj.arm(row.champion_reference),
    )


def deployment(row: DeploymentRow, rollout_row: RolloutRow | None) -> Deployment:
    """The domain deployment of its row and its current rollout's row."""
    return Deployment(
        id=row.id,
        model_id=row.model_id,
        description=row.description,
        labels=dict(row.labels),
        champion_version=row.champion_version,
        guards=tuple(row.guards),
        drift_thresholds=dj.thresholds(row.drift_thresholds),
        webhook_url=row.webhook_url,
        command_configured=False,
        rollout=rollout(rollout_row, row.guards) if rollout_row is not None else None,
        generation=row.generation,
        created_by=row.created_by,
        create_time=convert.utc(row.create_time),
        update_time=convert.utc(row.update_time),
        etag=deployment_etag(row),
        last_drift_time=convert.utc(row.last_drift_time) if row.last_drift_time else None,
    )


def rollout_columns(r: Rollout) -> dict[str, Any]:
    """The rollout row's columns for a domain rollout (evidence excluded)."""
    return {
        "candidate_version": r.candidate_version,
        "champion_version": r.champion_version,
        "strategy": r.strategy,
        "steps": list(r.steps),
        "split": r.split,
        "shadow_fraction": r.shadow_fraction,
        "step_duration_seconds": r.step_duration_seconds,
        "min_requests": r.min_requests,
        "guards": list(r.guards),
        "state": r.state,
        "phase": r.phase,
        "step": r.step,
        "candidate_percent": r.candidate_percent,
        "phase_start_time": r.phase_start_time,
        "start_time": r.start_time,
        "end_time": r.end_time,
        "started_by": r.started_by,
        "reason": r.reason,
        "step_candidate_requests": r.step_candidate_requests,
    }


def event(row: RolloutEventRow) -> RolloutEvent:
    return RolloutEvent(
        deployment_id=row.deployment_id,
        rollout_id=row.rollout_id,
        state=row.state,
        phase=row.phase,
        step=row.step,
        candidate_percent=row.candidate_percent,
        action=row.action,
        reason=row.reason,
        actor=row.actor,
        evidence=dj.evidence(row.evidence),
        create_time=convert.utc(row.create_time),
    )


def report(row: WindowReportRow) -> WindowReport:
    body = row.body
    arms = tuple(a for a in (dj.arm(x) for x in body.get("arms", [])) if a is not None)
    return WindowReport(
        deployment_id=row.deployment_id,
        replica=row.replica,
        sequence=row.sequence,
        generation=row.generation,
        rollout_id=row.rollout_id,
        start_time=convert.utc(row.start_time) if row.start_time else None,
        end_time=convert.utc(row.end_time) if row.end_time else None,
        arms=arms,
        shadow=dj.shadow(body.get("shadow")),
        queued_windows=int(body.get("queued_windows", 0)),
        receive_time=convert.utc(row.receive_time),
        id=row.id or 0,
    )


class Deployments:
    """Deployments with their rollouts, events and window reports."""

    def __init__(self, session: Session) -> None:
        self.s = session

    # Deployments ------------------------------------------------------------------------------

    def row(self, deployment_id: str, *, lock: bool = False) -> DeploymentRow | None:
        """The deployment's row; with ``lock``, locked until the transaction ends (PostgreSQL:
        ``SELECT ... FOR UPDATE``; SQLite's write transactions hold the database's lock)."""
        if lock:
            return self.s.get(DeploymentRow, deployment_id, with_for_update=True)
        return self.s.get(DeploymentRow, deployment_id)

    def rollout_row(self, deployment_id: str, rollout_id: str) -> RolloutRow | None:
        if not rollout_id:
            return None
        return self.s.get(RolloutRow, (deployment_id, rollout_id))

    def get(self, deployment_id: str, *, lock: bool = False) -> Deployment | None:
        row = self.row(deployment_id, lock=lock)
        if row is None:
            return None
        return deployment(row, self.rollout_row(row.id, row.rollout_id))

    def add(self, row: DeploymentRow) -> Deployment | None:
        """Insert a new deployment; None when its id is taken (by a request that committed
        while this one ran)."""
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            if self.row(row.id) is None:
                raise
            return None
        return deployment(row, None)

    def for_model(self, model_id: str) -> list[str]:
        """Ids of the deployments of a model."""
        q = select(DeploymentRow.id).where(DeploymentRow.model_id == model_id)
        return sorted(str(i) for i in self.s.exec(q))

    def using_version(self, model_id: str, version: int) -> list[str]:
        """Ids of the deployments that serve ``version`` of a model: as their champion, or as
        the candidate or champion of a rollout still in progress."""
        champions = select(DeploymentRow.id).where(
            DeploymentRow.model_id == model_id, DeploymentRow.champion_version == version
        )
        rollouts = (
            select(DeploymentRow.id)
            .join(RolloutRow, col(RolloutRow.deployment_id) == col(DeploymentRow.id))
            .where(
                DeploymentRow.model_id == model_id,
                col(RolloutRow.state).in_(ACTIVE_STATES),
                or_(
                    col(RolloutRow.candidate_version) == version,
                    col(RolloutRow.champion_version) == version,
                ),
            )
        )
        return sorted({str(i) for q in (champions, rollouts) for i in self.s.exec(q)})

    def page(
        self, after: list[Any] | None, limit: int, models: Collection[str] | None = None
    ) -> tuple[list[Deployment], list[Any] | None]:
        """Deployments by id after ``after``; with ``models``, only those serving one of them
        (a caller whose roles hold on some models): its page holds them alone and its key is
        one of theirs."""
        q = select(DeploymentRow)
        if models is not None:
            q = q.where(col(DeploymentRow.model_id).in_(sorted(models)))
        rows, next_key = scan_by_id(self.s, q, col(DeploymentRow.id), after, limit, False)
        return [deployment(r, self.rollout_row(r.id, r.rollout_id)) for r in rows], next_key

    def update(
        self,
        deployment_id: str,
        if_etag: str,
        changes: dict[str, Any],
        now: datetime,
        *,
        bump_generation: bool = False,
    ) -> Deployment:
        """Apply ``changes`` when the etag matches (any, when empty); ABORTED otherwise."""
        current = self.row(deployment_id)
        assert current is not None
        name = f"deployments/{deployment_id}"
        if if_etag and deployment_etag(current) != if_etag:
            raise stale_etag(name)
        if not self.compare_and_set(deployment_id, current.revision, changes, now, bump_generation):
            raise stale_etag(name)
        got = self.get(deployment_id)
        assert got is not None
        return got

    def compare_and_set(
        self,
        deployment_id: str,
        revision: int,
        changes: dict[str, Any],
        now: datetime,
        bump_generation: bool,
    ) -> bool:
        """Update the deployment if it is still at ``revision``; False when it moved on."""
        values: dict[str, Any] = {**changes, "update_time": now, "revision": revision + 1}
        if bump_generation:
            values["generation"] = DeploymentRow.generation + 1
        result = self.s.exec(  # type: ignore[call-overload]
            update(DeploymentRow)
            .where(col(DeploymentRow.id) == deployment_id, col(DeploymentRow.revision) == revision)
            .values(**values)
        )
        self.s.expire_all()
        return bool(result.rowcount == 1)

    def delete(self, deployment_id: str) -> None:
        for table in (DriftWindowRow, WindowReportRow, RolloutEventRow, RolloutRow):
            self.s.exec(  # type: ignore[call-overload]
                delete(table).where(col(table.deployment_id) == deployment_id)
            )
        self.s.exec(delete(DeploymentRow).where(col(DeploymentRow.id) == deployment_id))  # type: ignore[call-overload]

    def generations(self) -> dict[str, int]:
        """Every deployment's generation (what the SQLite watcher polls)."""
        q = select(DeploymentRow.id, DeploymentRow.generation)
        return {str(i): int(g) for i, g in self.s.exec(q)}

    def claim_drift(self, deployment_id: str, now: datetime, not_since: datetime) -> bool:
        """Record a drift event time unless one was recorded at or after ``not_since``."""
        result = self.s.exec(  # type: ignore[call-overload]
            update(DeploymentRow)
            .where(
                col(DeploymentRow.id) == deployment_id,
                or_(
                    col(DeploymentRow.last_drift_time).is_(None),
                    col(DeploymentRow.last_drift_time) < not_since,
                ),
            )
            .values(last_drift_time=now)
        )
        return bool(result.rowcount == 1)

    # Rollouts ---------------------------------------------------------------------------------

    def save_rollout(self, r: Rollout, step_generation: int) -> None:
        """Insert or overwrite a rollout's state (its evidence is kept)."""
        row = self.rollout_row(r.deployment_id, r.id)
        columns = {**rollout_columns(r), "step_generation": step_generation}
        if row is None:
            self.s.add(RolloutRow(deployment_id=r.deployment_id, id=r.id, **columns))
        else:
            for key, value in columns.items():
                setattr(row, key, value)
            self.s.add(row)
        self.s.flush()

    def update_rollout(self, deployment_id: str, rollout_id: str, **values: Any) -> None:
        """Set columns of a rollout's row (values may be SQL expressions of its columns)."""
        self.s.exec(  # type: ignore[call-overload]
            update(RolloutRow)
            .where(col(RolloutRow.deployment_id) == deployment_id, col(RolloutRow.id) == rollout_id)
            .values(**values)
        )

    def add_step_requests(self, deployment_id: str, rollout_id: str, requests: int) -> None:
        """Count candidate requests toward the current step (atomically)."""
        counted = RolloutRow.step_candidate_requests + requests
        self.update_rollout(deployment_id, rollout_id, step_candidate_requests=counted)

    def set_evidence(
        self,
        deployment_id: str,
        rollout_id: str,
        evidence: dict[str, Any],
        champion_reference: dict[str, Any] | None,
    ) -> None:
        values: dict[str, Any] = {"evidence": evidence}
        if champion_reference is not None:
            values["champion_reference"] = champion_reference
        self.update_rollout(deployment_id, rollout_id, **values)

    def running(self) -> list[tuple[str, int]]:
        """(deployment id, revision) of every deployment whose current rollout is running."""
        q = (
            select(DeploymentRow.id, DeploymentRow.revision)
            .join(
                RolloutRow,
                (col(RolloutRow.deployment_id) == col(DeploymentRow.id))
                & (col(RolloutRow.id) == col(DeploymentRow.rollout_id)),
            )
            .where(col(RolloutRow.state) == RUNNING)
        )
        return [(str(i), int(r)) for i, r in self.s.exec(q)]

    def has_active_rollout(self, deployment_id: str) -> bool:
        q = select(RolloutRow.id).where(
            RolloutRow.deployment_id == deployment_id, col(RolloutRow.state).in_(ACTIVE_STATES)
        )
        return self.s.exec(q.limit(1)).first() is not None

    # Events -----------------------------------------------------------------------------------

    def add_event(self, row: RolloutEventRow) -> RolloutEvent:
        self.s.add(row)
        self.s.flush()
        return event(row)

    def events_page(
        self, deployment_id: str, after: list[Any] | None, limit: int
    ) -> tuple[list[RolloutEvent], list[Any] | None]:
        rows, next_key = scan_by_id(
            self.s,
            select(RolloutEventRow).where(RolloutEventRow.deployment_id == deployment_id),
            col(RolloutEventRow.id),
            after,
            limit,
            True,
        )
        return [event(r) for r in rows], next_key

    # Window reports ---------------------------------------------------------------------------

    def add_report(self, row: WindowReportRow) -> bool:
        """Store a report; False when its (deployment, replica, sequence) was seen before."""
        q = select(WindowReportRow.id).where(
            WindowReportRow.deployment_id == row.deployment_id,
            WindowReportRow.replica == row.replica,
            WindowReportRow.sequence == row.sequence,
        )
        if self.s.exec(q).first() is not None:
            return False
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            return False
        return True

    def recent_reports(
        self,
        deployment_id: str,
        rollout_id: str,
        since: datetime,
        *,
        newer_than: tuple[int, datetime] | None = None,
    ) -> list[WindowReport]:
        """Reports of a rollout (or of no rollout, for ``""``) received after ``since`` (not at
        it: a step that began at ``since`` began in the transaction of the report received
        then, which counted in the step before); with ``newer_than`` (a report id and a
        receive time), only those with a higher id or received later (SQLite may give a new
        row the id of a deleted one)."""
        q = select(WindowReportRow).where(
            WindowReportRow.deployment_id == deployment_id,
            WindowReportRow.rollout_id == rollout_id,
            col(WindowReportRow.receive_time) > since,
        )
        if newer_than is not None:
            last_id, last_time = newer_than
            newer = col(WindowReportRow.id) > last_id
            q = q.where(or_(newer, col(WindowReportRow.receive_time) > last_time))
        return [report(r) for r in self.s.exec(q)]

    def reports_before(self, deployment_id: str, before: datetime) -> list[WindowReport]:
        """Every report of a deployment received before ``before``, whatever its rollout."""
        q = select(WindowReportRow).where(
            WindowReportRow.deployment_id == deployment_id,
            col(WindowReportRow.receive_time) < before,
        )
        return [report(r) for r in self.s.exec(q)]

    def latest_reports(
        self, deployment_id: str, rollout_id: str, since: datetime
    ) -> list[WindowReport]:
        """Each replica's newest report (highest sequence) of a rollout (or of no rollout, for
        ``""``) among those received after ``since``, in replica order."""
        recent = (
            WindowReportRow.deployment_id == deployment_id,
            WindowReportRow.rollout_id == rollout_id,
            col(WindowReportRow.receive_time) >= since,
        )
        newest = (
            select(
                col(WindowReportRow.replica).label("replica"),
                func.max(WindowReportRow.sequence).label("sequence"),
            )
            .where(*recent)
            .group_by(col(WindowReportRow.replica))
            .subquery()
        )
        q = (
            select(WindowReportRow)
            .join(
                newest,
                (col(WindowReportRow.replica) == newest.c.replica)
                & (col(WindowReportRow.sequence) == newest.c.sequence),
            )
            .where(*recent)
            .order_by(col(WindowReportRow.replica))
        )
        return [report(r) for r in self.s.exec(q)]

    def prune_reports(self, before: datetime) -> int:
        """Delete reports received before ``before``; returns how many."""
        result = self.s.exec(  # type: ignore[call-overload]
            delete(WindowReportRow).where(col(WindowReportRow.receive_time) < before)
        )
        return int(result.rowcount or 0)

    # Drift windows ----------------------------------------------------------------------------

    def drift_window(self, deployment_id: str, arm: str) -> DriftWindowRow | None:
        """The open drift window of a deployment's arm."""
        return self.s.get(DriftWindowRow, (deployment_id, arm))

    def save_drift_window(self, row: DriftWindowRow) -> None:
        """Insert or overwrite an arm's open drift window."""
        self.s.merge(row)
        self.s.flush()

    def close_drift_windows(self, deployment_id: str, arms: Iterable[str] | None = None) -> None:
        """Delete the open drift windows of ``arms`` (all arms for None)."""
        q = delete(DriftWindowRow).where(col(DriftWindowRow.deployment_id) == deployment_id)
        if arms is not None:
            q = q.where(col(DriftWindowRow.arm).in_(list(arms)))
        self.s.exec(q)  # type: ignore[call-overload]
