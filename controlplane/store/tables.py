"""SQLModel tables. Only the store package imports these; everything else sees domain objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, LargeBinary, UniqueConstraint
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
    """Request ids of completed mutations (AIP-155), with the resource they produced."""

    __tablename__ = "request_ids"

    request_id: str = Field(primary_key=True, max_length=64)
    method: str = Field(max_length=128)
    resource: str = ""
    principal: str = ""
    create_time: datetime = _ts(nullable=False)


class AuditEventRow(SQLModel, table=True):
    """One event of the hash-chained audit trail; ``seq`` runs from 1 without gaps."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_resource_seq", "resource", "seq"),
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        Index("ix_audit_events_time", "time"),
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
