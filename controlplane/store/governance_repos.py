"""Repositories of the evaluation and governance tables, returning domain objects.

They work on the session of any :class:`~controlplane.store.Tx`: ``Governance(tx.session)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.domain import Operation
from controlplane.domain.governance import (
    Approval,
    Evaluation,
    Evidence,
    EvidenceItem,
    GateDecision,
    Policy,
)
from controlplane.store import convert
from controlplane.store.repos import (
    INT32_MAX,
    is_unique_violation,
    scan_by_id,
    scan_newest,
    stale_etag,
)
from controlplane.store.tables import (
    ApprovalRow,
    EvaluationRow,
    GateDecisionRow,
    OperationRow,
    PolicyRevisionRow,
    PolicyRow,
)

#: The policy target that governs every deployment without a policy bound to its own
#: ``deployments/{d}``; gate decisions and approvals under it still name the deployment.
ALL_DEPLOYMENTS = "deployments/*"


def evaluation(row: EvaluationRow) -> Evaluation:
    return Evaluation(
        model_id=row.model_id,
        version=row.version,
        id=row.id,
        dataset_sha256=row.dataset_sha256,
        dataset_role=row.dataset_role,
        label=row.label,
        report=dict(row.report),
        report_sha256=row.report_sha256,
        compare_to=row.compare_to,
        compared_version=row.compared_version,
        deltas=dict(row.deltas),
        operation=row.operation,
        created_by=row.created_by,
        create_time=convert.utc(row.create_time),
    )


def policy_etag(policy_id: str, revision: int, created: datetime, updated: datetime) -> str:
    """The etag of a policy as updated at ``updated``: an update that keeps the revision (one
    that changes only the description) changes it too, since every update of a policy is
    stamped later than the one before (see :meth:`Governance.next_revision_time`)."""
    return convert.etag(
        f"policies/{policy_id}@{convert.utc(updated).isoformat()}", revision, created
    )


def policy(row: PolicyRow | PolicyRevisionRow, current: PolicyRow) -> Policy:
    """A policy as of ``row``: the current row, or one of its revisions as it was made (its
    rules, target and the description the policy had then); the etag is the current one."""
    return Policy(
        id=current.id,
        description=row.description,
        target=row.target,
        rules=list(row.rules),
        revision=row.revision,
        created_by=current.created_by,
        updated_by=row.actor if isinstance(row, PolicyRevisionRow) else current.updated_by,
        create_time=convert.utc(current.create_time),
        update_time=convert.utc(
            row.time if isinstance(row, PolicyRevisionRow) else row.update_time
        ),
        etag=policy_etag(current.id, current.revision, current.create_time, current.update_time),
    )


def gate_decision(row: GateDecisionRow) -> GateDecision:
    return GateDecision(
        model_id=row.model_id,
        version=row.version,
        id=row.id,
        target=row.target,
        policy=row.policy,
        policy_revision=row.policy_revision,
        evaluation=row.evaluation,
        passed=row.passed,
        results=list(row.results),
        evidence_sha256=row.evidence_sha256,
        created_by=row.created_by,
        create_time=convert.utc(row.create_time),
        reference=dict(row.reference or {}),
    )


def evidence_to_json(e: Evidence) -> dict[str, Any]:
    return {
        "artifact_sha256": e.artifact_sha256,
        "evaluations": [[i.resource, i.sha256] for i in e.evaluations],
        "policy": e.policy,
        "policy_revision": e.policy_revision,
    }


def evidence_from_json(data: dict[str, Any], sha256: str) -> Evidence:
    return Evidence(
        artifact_sha256=str(data.get("artifact_sha256", "")),
        evaluations=[EvidenceItem(str(r), str(s)) for r, s in data.get("evaluations", [])],
        policy=str(data.get("policy", "")),
        policy_revision=int(data.get("policy_revision", 0)),
        sha256=sha256,
    )


def approval(row: ApprovalRow) -> Approval:
    return Approval(
        model_id=row.model_id,
        version=row.version,
        id=row.id,
        target=row.target,
        decision=row.decision,
        comment=row.comment,
        approver=row.approver,
        roles=list(row.roles),
        evidence=evidence_from_json(row.evidence, row.evidence_sha256),
        signature=row.signature,
        key_id=row.key_id,
        create_time=convert.utc(row.create_time),
    )


class Governance:
    """Evaluations, policies, gate decisions, approvals, and expired operations."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def delete_model_records(self, model_id: str) -> None:
        """Delete the evaluations, gate decisions and approvals of every version of a model
        (the audit trail keeps their history), so that a model created later under its id
        inherits none of them."""
        for table in (EvaluationRow, GateDecisionRow, ApprovalRow):
            self.s.exec(  # type: ignore[call-overload]
                delete(table).where(col(table.model_id) == model_id)
            )

    # Evaluations ------------------------------------------------------------------------------

    def add_evaluation(self, row: EvaluationRow) -> Evaluation:
        self.s.add(row)
        self.s.flush()
        return evaluation(row)

    def get_evaluation(self, model_id: str, version: int, eval_id: str) -> Evaluation | None:
        row = self.s.get(EvaluationRow, eval_id)
        if row is None or row.model_id != model_id or row.version != version:
            return None
        return evaluation(row)

    def latest_evaluation(
        self, model_id: str, version: int, dataset_sha256: str = "", label: str = ""
    ) -> Evaluation | None:
        q = select(EvaluationRow).where(
            EvaluationRow.model_id == model_id, EvaluationRow.version == version
        )
        if dataset_sha256:
            q = q.where(EvaluationRow.dataset_sha256 == dataset_sha256)
        if label:
            q = q.where(EvaluationRow.label == label)
        q = q.order_by(col(EvaluationRow.create_time).desc(), col(EvaluationRow.id).desc())
        row = self.s.exec(q.limit(1)).first()
        return evaluation(row) if row else None

    def evaluations_newest(
        self, model_id: str, version: int, dataset_sha256: str, label: str, page: int = 16
    ) -> Iterator[Evaluation]:
        """The version's evaluations on ``dataset_sha256`` with ``label``, newest first (the
        order of :meth:`latest_evaluation`), read ``page`` at a time as the caller goes on."""
        q = select(EvaluationRow).where(
            EvaluationRow.model_id == model_id,
            EvaluationRow.version == version,
            EvaluationRow.dataset_sha256 == dataset_sha256,
            EvaluationRow.label == label,
        )
        after: list[Any] | None = None
        while True:
            rows, after = scan_newest(self.s, q, EvaluationRow, after, page)
            yield from (evaluation(r) for r in rows)
            if after is None:
                return

    def evaluations_page(
        self, model_id: str, version: int, after: list[Any] | None, limit: int
    ) -> tuple[list[Evaluation], list[Any] | None]:
        q = select(EvaluationRow).where(
            EvaluationRow.model_id == model_id, EvaluationRow.version == version
        )
        rows, next_key = scan_newest(self.s, q, EvaluationRow, after, limit)
        return [evaluation(r) for r in rows], next_key

    # Policies ---------------------------------------------------------------------------------

    def policy_row(self, policy_id: str, *, for_update: bool = False) -> PolicyRow | None:
        """The policy's row; with ``for_update``, locked until commit and read afresh (not the
        copy this session may hold from before the lock)."""
        if for_update:
            return self.s.get(PolicyRow, policy_id, with_for_update=True, populate_existing=True)
        return self.s.get(PolicyRow, policy_id)

    def next_revision_time(self, policy_id: str) -> datetime | None:
        """The earliest time the policy's next update may carry: just after its last revision
        and its last update (None when it has neither). Revisions stamped so run in the order of
        their numbers, which a replayed update relies on to find the revision it made, and every
        update moves the update time, and so the etag, forward; the caller holds the lock."""
        q = select(func.max(PolicyRevisionRow.time)).where(PolicyRevisionRow.policy_id == policy_id)
        times = [self.s.exec(q).one()]
        row = self.policy_row(policy_id)
        if row is not None:
            times.append(row.update_time)
        known = [convert.utc(t) for t in times if t is not None]
        return max(known) + timedelta(microseconds=1) if known else None

    def policy_revision_row(self, policy_id: str, revision: int) -> PolicyRevisionRow | None:
        """The record of one revision of a policy, as it was made."""
        if not 0 < revision <= INT32_MAX:
            return None
        return self.s.get(PolicyRevisionRow, (policy_id, revision))

    def get_policy(self, policy_id: str, revision: int = 0) -> Policy | None:
        current = self.policy_row(policy_id)
        if current is None:
            return None
        if not revision or revision == current.revision:
            return policy(current, current)
        # Out of the column's range, no such revision (see policy_revision_row).
        old = self.policy_revision_row(policy_id, revision)
        return policy(old, current) if old else None

    def policy_for_target(self, target: str) -> Policy | None:
        """The policy that governs ``target``: the one bound to it, or, for a deployment
        (``deployments/{d}``) without one, the one bound to ``deployments/*``."""
        bound = self.policy_bound_to(target)
        if bound is None and target.startswith("deployments/") and target != ALL_DEPLOYMENTS:
            bound = self.policy_bound_to(ALL_DEPLOYMENTS)
        return bound

    def policy_bound_to(self, target: str) -> Policy | None:
        """The policy bound to exactly ``target`` (``deployments/*`` included), if any."""
        row = self.s.exec(select(PolicyRow).where(PolicyRow.target == target)).first()
        return policy(row, row) if row else None

    def add_policy(self, row: PolicyRow) -> Policy | None:
        """Store a new policy; None when its id or its target is taken (by a create or an
        update that committed after this transaction looked). Its first revision follows the
        last one a deleted policy of the same id had, so that (policy, revision), which evidence
        names, never means two rule sets."""
        last = self.s.exec(
            select(func.max(PolicyRevisionRow.revision)).where(
                PolicyRevisionRow.policy_id == row.id
            )
        ).one()
        if last is not None:
            row.revision = last + 1
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self._revision(row, row.created_by, row.create_time)
                self.s.flush()
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            return None
        return policy(row, row)

    def _revision(self, row: PolicyRow, actor: str, now: datetime) -> None:
        self.s.add(
            PolicyRevisionRow(
                policy_id=row.id,
                revision=row.revision,
                description=row.description,
                target=row.target,
                rules=list(row.rules),
                actor=actor,
                time=now,
            )
        )

    def update_policy(
        self, policy_id: str, if_etag: str, changes: dict[str, Any], actor: str, now: datetime
    ) -> Policy | None:
        """Apply ``changes`` when ``if_etag`` matches (any, when empty); None when a new target
        is taken (by a policy that committed after this transaction looked).

        A change of the rules or the target makes a new revision (and a new record of it); an
        update that leaves both as they are (a new description, or the same rules sent again)
        keeps the revision, so that the evidence of gate decisions and approvals, which names
        the revision, still holds. Either way the etag changes. Without an etag the row is
        locked first, so that a concurrent update cannot slip in between the read and the
        compare-and-set and make a blind update fail.
        """
        current = self.policy_row(policy_id, for_update=not if_etag)
        assert current is not None
        name = f"policies/{policy_id}"
        etag = policy_etag(policy_id, current.revision, current.create_time, current.update_time)
        if if_etag and etag != if_etag:
            raise stale_etag(name)
        new_revision = any(
            path in changes and changes[path] != getattr(current, path)
            for path in ("rules", "target")
        )
        revision = current.revision + 1 if new_revision else current.revision
        try:
            with self.s.begin_nested():
                result = self.s.exec(  # type: ignore[call-overload]
                    update(PolicyRow)
                    .where(
                        col(PolicyRow.id) == policy_id,
                        col(PolicyRow.revision) == current.revision,
                        col(PolicyRow.update_time) == current.update_time,
                    )
                    .values(**changes, updated_by=actor, update_time=now, revision=revision)
                )
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            return None
        if result.rowcount != 1:
            raise stale_etag(name)
        self.s.expire_all()
        row = self.policy_row(policy_id)
        assert row is not None
        if new_revision:
            self._revision(row, actor, now)
            self.s.flush()
        return policy(row, row)

    def policies_page(
        self, after: list[Any] | None, limit: int
    ) -> tuple[list[Policy], list[Any] | None]:
        rows, next_key = scan_by_id(
            self.s, select(PolicyRow), col(PolicyRow.id), after, limit, False
        )
        return [policy(r, r) for r in rows], next_key

    def delete_policy(self, policy_id: str, revision: int) -> None:
        """Delete the policy when it is still at ``revision``; ABORTED (ETAG_MISMATCH) when a
        concurrent update moved it on. Its revisions stay: gate decisions and approvals name
        them, and a policy re-created under the same id numbers its revisions after them."""
        result = self.s.exec(  # type: ignore[call-overload]
            delete(PolicyRow).where(
                col(PolicyRow.id) == policy_id, col(PolicyRow.revision) == revision
            )
        )
        if result.rowcount != 1:
            raise stale_etag(f"policies/{policy_id}")

    # Gate decisions ---------------------------------------------------------------------------

    def add_decision(self, row: GateDecisionRow) -> GateDecision:
        self.s.add(row)
        self.s.flush()
        return gate_decision(row)

    def get_decision(self, model_id: str, version: int, decision_id: str) -> GateDecision | None:
        row = self.s.get(GateDecisionRow, decision_id)
        if row is None or row.model_id != model_id or row.version != version:
            return None
        return gate_decision(row)

    def latest_decision(self, model_id: str, version: int, target: str) -> GateDecision | None:
        q = (
            select(GateDecisionRow)
            .where(
                GateDecisionRow.model_id == model_id,
                GateDecisionRow.version == version,
                GateDecisionRow.target == target,
            )
            .order_by(col(GateDecisionRow.create_time).desc(), col(GateDecisionRow.id).desc())
            .limit(1)
        )
        row = self.s.exec(q).first()
        return gate_decision(row) if row else None

    def latest_decisions(self, model_id: str, version: int) -> list[GateDecision]:
        """A version's newest gate decision for each target, by target: one query, however
        many decisions each target has."""
        newest_first = (col(GateDecisionRow.create_time).desc(), col(GateDecisionRow.id).desc())
        ranked = (
            select(
                col(GateDecisionRow.id).label("id"),
                func.row_number()
                .over(partition_by=col(GateDecisionRow.target), order_by=newest_first)
                .label("rank"),
            )
            .where(GateDecisionRow.model_id == model_id, GateDecisionRow.version == version)
            .subquery()
        )
        q = (
            select(GateDecisionRow)
            .join(ranked, ranked.c.id == GateDecisionRow.id)
            .where(ranked.c.rank == 1)
            .order_by(col(GateDecisionRow.target))
        )
        return [gate_decision(r) for r in self.s.exec(q)]

    def decisions_page(
        self, model_id: str, version: int, target: str, after: list[Any] | None, limit: int
    ) -> tuple[list[GateDecision], list[Any] | None]:
        q = select(GateDecisionRow).where(
            GateDecisionRow.model_id == model_id, GateDecisionRow.version == version
        )
        if target:
            q = q.where(GateDecisionRow.target == target)
        rows, next_key = scan_newest(self.s, q, GateDecisionRow, after, limit)
        return [gate_decision(r) for r in rows], next_key

    # Approvals --------------------------------------------------------------------------------

    def add_approval(self, row: ApprovalRow) -> Approval:
        self.s.add(row)
        self.s.flush()
        return approval(row)

    def approvals(self, model_id: str, version: int, target: str = "") -> list[Approval]:
        """A version's approvals, newest first."""
        q = select(ApprovalRow).where(
            ApprovalRow.model_id == model_id, ApprovalRow.version == version
        )
        if target:
            q = q.where(ApprovalRow.target == target)
        q = q.order_by(col(ApprovalRow.create_time).desc(), col(ApprovalRow.id).desc())
        return [approval(r) for r in self.s.exec(q)]

    def approvals_page(
        self, model_id: str, version: int, after: list[Any] | None, limit: int
    ) -> tuple[list[Approval], list[Any] | None]:
        """A version's approvals, newest first, after the key ``after`` (create time and id,
        as a page token holds them): one recorded between two pages shifts no row."""
        q = select(ApprovalRow).where(
            ApprovalRow.model_id == model_id, ApprovalRow.version == version
        )
        rows, next_key = scan_newest(self.s, q, ApprovalRow, after, limit)
        return [approval(r) for r in rows], next_key

    # Operations -------------------------------------------------------------------------------

    def expired_operations(self, now: datetime, limit: int = 100) -> list[Operation]:
        """Unfinished operations whose owner's lease ran out before ``now``."""
        q = (
            select(OperationRow)
            .where(
                col(OperationRow.done).is_(False),
                col(OperationRow.lease_expire_time).is_not(None),
                col(OperationRow.lease_expire_time) < now,
            )
            .limit(limit)
        )
        return [convert.operation(r) for r in self.s.exec(q)]
