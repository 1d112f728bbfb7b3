"""SQLModel tables. Only the store package imports these; everything else sees domain objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


def _json(**kw: Any) -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False, **kw))


class ModelRow(SQLModel, table=True):
    __tablename__ = "models"

    id: str = Field(primary_key=True, max_length=63)
    description: str = ""
    labels: dict[str, str] = _json()
    intended_use: str = ""
    limitations: str = ""
    latest_version: int = Field(default=0, sa_type=BigInteger)
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)
    update_time: datetime = _ts(nullable=False)
    revision: int = 1


class ModelVersionRow(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(foreign_key="models.id", index=True, max_length=63)
    version: int = Field(sa_type=BigInteger)
    description: str = ""
    labels: dict[str, str] = _json()
    state: str = "REGISTERED"
    artifact_sha256: str = Field(max_length=64, index=True)
    artifact: dict[str, Any] = _json()
    signature: dict[str, Any] = _json()
    lineage: dict[str, Any] = _json()
    feature_names: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    label_column: str = ""
    baseline: dict[str, Any] = _json()
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)
    update_time: datetime = _ts(nullable=False)
    revision: int = 1


class AliasRow(SQLModel, table=True):
    __tablename__ = "aliases"

    model_id: str = Field(foreign_key="models.id", primary_key=True, max_length=63)
    alias: str = Field(primary_key=True, max_length=63)
    version: int = Field(sa_type=BigInteger)
    updated_by: str = ""
    reason: str = ""
    update_time: datetime = _ts(nullable=False)


class AliasEventRow(SQLModel, table=True):
    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_model_alias", "model_id", "alias", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(max_length=63)
    alias: str = Field(max_length=63)
    version: int | None = Field(default=None, sa_type=BigInteger)
    previous_version: int | None = Field(default=None, sa_type=BigInteger)
    actor: str = ""
    reason: str = ""
    time: datetime = _ts(nullable=False)


class BlobRow(SQLModel, table=True):
    __tablename__ = "blobs"

    sha256: str = Field(primary_key=True, max_length=64)
    size_bytes: int = Field(sa_type=BigInteger)
    media_type: str = ""
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)


class OperationRow(SQLModel, table=True):
    __tablename__ = "operations"

    id: str = Field(primary_key=True, max_length=63)
    kind: str = Field(max_length=63)
    target: str = Field(default="", index=True)
    done: bool = False
    progress: float = 0.0
    progress_message: str = ""
    error: dict[str, Any] = _json()
    result_type: str = ""
    result: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    op_metadata: dict[str, Any] = _json()
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)
    update_time: datetime = _ts(nullable=False)
    owner: str = ""
    lease_expire_time: datetime | None = _ts(nullable=True)
    revision: int = 1


class RequestIdRow(SQLModel, table=True):
    """Request ids of completed mutations (AIP-155), with the resource they produced and the
    SHA-256 fingerprint of the request (method, caller, arguments) that produced it."""

    __tablename__ = "request_ids"

    request_id: str = Field(primary_key=True, max_length=64)
    method: str = Field(max_length=128)
    resource: str = ""
    principal: str = ""
    request_sha256: str = Field(default="", max_length=64)
    create_time: datetime = _ts(nullable=False)


class AuditEventRow(SQLModel, table=True):
    """One event of the hash-chained audit trail; ``seq`` runs from 1 without gaps."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_resource_seq", "resource", "seq"),
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        Index("ix_audit_events_time", "time"),
        CheckConstraint("seq >= 1", name="ck_audit_events_seq_from_one"),
    )

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    time: datetime = _ts(nullable=False)
    actor: str = ""
    action: str = Field(max_length=128)
    resource: str = ""
    request_id: str = Field(default="", max_length=64)
    before_sha256: str = Field(default="", max_length=64)
    after_sha256: str = Field(default="", max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class EvaluationRow(SQLModel, table=True):
    """A stored evaluation report of a version."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_version", "model_id", "version", "create_time"),)

    id: str = Field(primary_key=True, max_length=63)
    model_id: str = Field(max_length=63)
    version: int = Field(sa_type=BigInteger)
    dataset_sha256: str = Field(max_length=64)
    dataset_role: str = Field(default="", max_length=63)
    label: str = ""
    report: dict[str, Any] = _json()
    report_sha256: str = Field(max_length=64)
    compare_to: str = Field(default="", max_length=63)
    compared_version: str = ""
    deltas: dict[str, Any] = _json()
    operation: str = ""
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)


class PolicyRow(SQLModel, table=True):
    """The latest revision of a policy; one policy per target."""

    __tablename__ = "policies"

    id: str = Field(primary_key=True, max_length=63)
    description: str = ""
    target: str = Field(unique=True, max_length=200)
    rules: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = ""
    updated_by: str = ""
    create_time: datetime = _ts(nullable=False)
    update_time: datetime = _ts(nullable=False)
    revision: int = 1


class PolicyRevisionRow(SQLModel, table=True):
    """Every revision of every policy, kept when the policy is updated."""

    __tablename__ = "policy_revisions"

    policy_id: str = Field(primary_key=True, max_length=63)
    revision: int = Field(primary_key=True)
    description: str = ""
    target: str = Field(max_length=200)
    rules: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    actor: str = ""
    time: datetime = _ts(nullable=False)


class GateDecisionRow(SQLModel, table=True):
    """One gate decision with every rule's result."""

    __tablename__ = "gate_decisions"
    __table_args__ = (
        Index("ix_gate_decisions_version", "model_id", "version", "target", "create_time"),
    )

    id: str = Field(primary_key=True, max_length=63)
    model_id: str = Field(max_length=63)
    version: int = Field(sa_type=BigInteger)
    target: str = Field(max_length=200)
    policy: str = ""
    policy_revision: int = 0
    evaluation: str = ""
    passed: bool = False
    results: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    evidence_sha256: str = Field(max_length=64)
    created_by: str = ""
    create_time: datetime = _ts(nullable=False)
    # What ``delta`` was measured against (evidence.Comparison's serving, compared_version and
    # evaluation); empty for decisions recorded before revision 0012.
    reference: dict[str, str] = _json(server_default="{}")


class ApprovalRow(SQLModel, table=True):
    """A signed approval or rejection of a version for a target."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_version", "model_id", "version", "target"),)

    id: str = Field(primary_key=True, max_length=63)
    model_id: str = Field(max_length=63)
    version: int = Field(sa_type=BigInteger)
    target: str = Field(max_length=200)
    decision: str = Field(max_length=16)
    comment: str = ""
    approver: str = ""
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    evidence: dict[str, Any] = _json()
    evidence_sha256: str = Field(max_length=64)
    signature: str = ""
    key_id: str = Field(default="", max_length=64)
    create_time: datetime = _ts(nullable=False)
