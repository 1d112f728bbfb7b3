"""Rows to domain objects (the only place that knows both)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from controlplane.domain import (
    Alias,
    AliasEvent,
    Artifact,
    BaselineRef,
    Blob,
    Column,
    DatasetRef,
    Lineage,
    Model,
    ModelVersion,
    Operation,
    OperationError,
    Signature,
    TensorSpec,
    VersionState,
)
from controlplane.store.tables import (
    AliasEventRow,
    AliasRow,
    BlobRow,
    ModelRow,
    ModelVersionRow,
    OperationRow,
)


def utc(value: datetime) -> datetime:
    """``value`` in UTC: naive datetimes (as SQLite gives them back) are taken as UTC, others
    converted (PostgreSQL gives them back in the session's time zone)."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def etag(name: str, revision: int, created: datetime | None = None) -> str:
    """Opaque entity tag of one revision of a resource.

    ``created`` is the resource's create time: a resource deleted and created again under the
    same name starts again at revision 1, and only its create time tells the two apart, so that
    an etag read from the first never matches the second.
    """
    key = (
        f"{name}#{revision}" if created is None else f"{name}#{revision}@{utc(created).isoformat()}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def model(row: ModelRow) -> Model:
    return Model(
        id=row.id,
        description=row.description,
        labels=dict(row.labels),
        intended_use=row.intended_use,
        limitations=row.limitations,
        latest_version=row.latest_version,
        created_by=row.created_by,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        etag=etag(f"models/{row.id}", row.revision, row.create_time),
    )


def signature_to_json(sig: Signature) -> dict[str, Any]:
    def specs(items: list[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"inputs": specs(sig.inputs), "outputs": specs(sig.outputs)}


def signature_from_json(data: dict[str, Any]) -> Signature:
    def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
        return [TensorSpec(t["name"], t["datatype"], list(t["shape"])) for t in items]

    return Signature(specs(data.get("inputs", [])), specs(data.get("outputs", [])))


def lineage_to_json(lin: Lineage) -> dict[str, Any]:
    return {
        "training_run_id": lin.training_run_id,
        "datasets": [
            {
                "role": d.role,
                "source": d.source,
                "sha256": d.sha256,
                "row_count": d.row_count,
                "schema": [[c.name, c.type] for c in d.schema],
                "format": d.format,
            }
            for d in lin.datasets
        ],
        "parameters": dict(lin.parameters),
        "metrics": dict(lin.metrics),
        "code": {"repository": lin.code_repository, "commit": lin.code_commit},
        "environment": {
            "python_version": lin.python_version,
            "platform": lin.platform,
            "packages": [[n, v] for n, v in lin.packages],
        },
    }


def lineage_from_json(data: dict[str, Any]) -> Lineage:
    code = data.get("code", {})
    env = data.get("environment", {})
    return Lineage(
        training_run_id=data.get("training_run_id", ""),
        datasets=[
            DatasetRef(
                role=d["role"],
                source=d["source"],
                sha256=d["sha256"],
                row_count=d["row_count"],
                schema=[Column(n, t) for n, t in d["schema"]],
                format=d["format"],
            )
            for d in data.get("datasets", [])
        ],
        parameters=dict(data.get("parameters", {})),
        metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
        code_repository=code.get("repository", ""),
        code_commit=code.get("commit", ""),
        python_version=env.get("python_version", ""),
        platform=env.get("platform", ""),
        packages=[(n, v) for n, v in env.get("packages", [])],
    )


def version(row: ModelVersionRow | Any, aliases: list[str]) -> ModelVersion:
    """The domain version of a row (or of any object with its columns as attributes)."""
    base = row.baseline or {}
    return ModelVersion(
        model_id=row.model_id,
        version=row.version,
        description=row.description,
        labels=dict(row.labels),
        state=VersionState(row.state),
        artifact=Artifact(**row.artifact),
        signature=signature_from_json(row.signature),
        lineage=lineage_from_json(row.lineage),
        feature_names=list(row.feature_names),
        label_column=row.label_column,
        baseline=BaselineRef(**base) if base else None,
        aliases=sorted(aliases),
        created_by=row.created_by,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        etag=etag(f"models/{row.model_id}/versions/{row.version}", row.revision, row.create_time),
    )


def alias(row: AliasRow) -> Alias:
    return alias_as_set(
        row.model_id, row.alias, row.version, row.updated_by, row.reason, row.update_time
    )


def alias_as_set(
    model_id: str, name: str, version: int, actor: str, reason: str, time: datetime
) -> Alias:
    """The alias as one move (at ``time``, by ``actor``) left it."""
    return Alias(
        model_id=model_id,
        alias=name,
        version=version,
        updated_by=actor,
        reason=reason,
        update_time=utc(time),
        etag=etag(f"models/{model_id}/aliases/{name}", version, time),
    )


def alias_event(row: AliasEventRow) -> AliasEvent:
    return AliasEvent(
        model_id=row.model_id,
        alias=row.alias,
        version=row.version,
        previous_version=row.previous_version,
        actor=row.actor,
        reason=row.reason,
        time=utc(row.time),
    )


def blob(row: BlobRow) -> Blob:
    return Blob(
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        media_type=row.media_type,
        created_by=row.created_by,
        create_time=utc(row.create_time),
    )


def operation(row: OperationRow) -> Operation:
    err = row.error or {}
    return Operation(
        id=row.id,
        kind=row.kind,
        target=row.target,
        done=row.done,
        progress=row.progress,
        progress_message=row.progress_message,
        error=OperationError(**err) if err else None,
        result_type=row.result_type,
        result=bytes(row.result or b""),
        metadata=dict(row.op_metadata),
        created_by=row.created_by,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        owner=row.owner,
        lease_expire_time=utc(row.lease_expire_time) if row.lease_expire_time else None,
    )
