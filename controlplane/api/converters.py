"""Domain objects to and from ``modelplane.v1`` messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import any_pb2, duration_pb2, struct_pb2, timestamp_pb2

from controlplane.domain import (
    Alias,
    AliasEvent,
    Blob,
    Model,
    ModelVersion,
    Operation,
    Signature,
    TensorSpec,
)
from controlplane.services import NewDataset, NewVersion
from modelplane.errors import InvalidArgument
from modelplane.v1 import blobs_pb2, operations_pb2, registry_pb2

#: The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


#: The most nanos a Duration holds besides its seconds.
_MAX_NANOS = 999_999_999
#: The shortest positive duration the control plane keeps: it stores and serves durations as
#: ``timedelta`` does, to the microsecond.
SMALLEST_DURATION_SECONDS = 1e-6


def _bad_duration(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {message}", reason="INVALID_DURATION", metadata={"field": field}
    )


def seconds_of(d: duration_pb2.Duration, field: str = "duration") -> float:
    """A Duration in seconds, for any seconds (a float cannot overflow where ``ToTimedelta``
    raises past timedelta's range: callers bound them); INVALID_ARGUMENT (INVALID_DURATION,
    naming ``field``) when it is malformed: nanos outside ±999,999,999, or of the other sign
    than a nonzero seconds (Duration's own rules, which other languages' libraries enforce)."""
    if not -_MAX_NANOS <= d.nanos <= _MAX_NANOS:
        raise _bad_duration(
            field,
            f"is not a valid duration (seconds={d.seconds}, nanos={d.nanos}): nanos must be "
            f"from -{_MAX_NANOS} to {_MAX_NANOS}",
        )
    if (d.seconds > 0 and d.nanos < 0) or (d.seconds < 0 and d.nanos > 0):
        raise _bad_duration(
            field,
            f"is not a valid duration (seconds={d.seconds}, nanos={d.nanos}): nanos must have "
            "the sign of seconds",
        )
    return d.seconds + d.nanos / 1e9


def kept_seconds_of(d: duration_pb2.Duration, field: str) -> float:
    """:func:`seconds_of` for a duration the control plane keeps and serves back, which it
    does to the microsecond: a positive duration shorter than 1 µs is refused
    (INVALID_DURATION) rather than rounded, since it would read back as 0, which means "the
    default" in this API."""
    seconds = seconds_of(d, field)
    if 0 < seconds < SMALLEST_DURATION_SECONDS:
        raise _bad_duration(
            field,
            f"is {d.nanos} ns: a duration must be 0 (the default) or at least 1 µs, as the "
            "control plane keeps microseconds",
        )
    return seconds


def time_from_proto(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """``value`` as a UTC datetime, or INVALID_TIMESTAMP when it is outside Timestamp's range."""
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos <= 999_999_999):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (seconds={value.seconds}, nanos={value.nanos}); "
            "give a time from 0001-01-01 to 9999-12-31 UTC with nanos from 0 to 999999999",
            reason="INVALID_TIMESTAMP",
            metadata={"field": field},
        )
    return value.ToDatetime(tzinfo=UTC)


def model_to_proto(m: Model) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=m.name,
        description=m.description,
        labels=m.labels,
        intended_use=m.intended_use,
        limitations=m.limitations,
        latest_version=m.latest_version,
        created_by=m.created_by,
        create_time=ts(m.create_time),
        update_time=ts(m.update_time),
        etag=m.etag,
    )


def _specs(items: list[TensorSpec]) -> list[registry_pb2.TensorSpec]:
    return [registry_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in items]


def signature_to_proto(s: Signature) -> registry_pb2.Signature:
    return registry_pb2.Signature(inputs=_specs(s.inputs), outputs=_specs(s.outputs))


def version_to_proto(v: ModelVersion) -> registry_pb2.ModelVersion:
    a, lin = v.artifact, v.lineage
    out = registry_pb2.ModelVersion(
        name=v.name,
        version=v.version,
        description=v.description,
        labels=v.labels,
        state=registry_pb2.VersionState.Value(f"VERSION_STATE_{v.state.value}"),  # type: ignore[arg-type]
        artifact=registry_pb2.Artifact(
            sha256=a.sha256,
            size_bytes=a.size_bytes,
            format=a.format,
            ir_version=a.ir_version,
            opset=a.opset,
            producer_name=a.producer_name,
            producer_version=a.producer_version,
        ),
        signature=signature_to_proto(v.signature),
        lineage=registry_pb2.Lineage(
            training_run_id=lin.training_run_id,
            datasets=[
                registry_pb2.DatasetRef(
                    role=d.role,
                    source=d.source,
                    sha256=d.sha256,
                    row_count=d.row_count,
                    schema=[registry_pb2.Column(name=c.name, type=c.type) for c in d.schema],
                    format=d.format,
                )
                for d in lin.datasets
            ],
            parameters=lin.parameters,
            metrics=lin.metrics,
            code=registry_pb2.CodeRef(repository=lin.code_repository, commit=lin.code_commit),
            environment=registry_pb2.Environment(
                python_version=lin.python_version,
                platform=lin.platform,
                packages=[registry_pb2.Package(name=n, version=ver) for n, ver in lin.packages],
            ),
        ),
        feature_names=v.feature_names,
        label_column=v.label_column,
        aliases=v.aliases,
        created_by=v.created_by,
        create_time=ts(v.create_time),
        update_time=ts(v.update_time),
        etag=v.etag,
    )
    if v.baseline is not None:
        out.baseline.CopyFrom(
            registry_pb2.BaselineRef(
                sha256=v.baseline.sha256,
                row_count=v.baseline.row_count,
                feature_count=v.baseline.feature_count,
            )
        )
    return out


def new_version_from_proto(r: registry_pb2.CreateModelVersionRequest) -> NewVersion:
    return NewVersion(
        artifact_sha256=r.artifact_sha256,
        description=r.description,
        labels=dict(r.labels),
        datasets=[NewDataset(d.role, d.source, d.sha256) for d in r.datasets],
        label_column=r.label_column,
        feature_names=list(r.feature_names),
        training_run_id=r.training_run_id,
        parameters=dict(r.parameters),
        metrics=dict(r.metrics),
        code_repository=r.code.repository,
        code_commit=r.code.commit,
        python_version=r.environment.python_version,
        platform=r.environment.platform,
        packages=[(p.name, p.version) for p in r.environment.packages],
    )


def alias_to_proto(a: Alias) -> registry_pb2.Alias:
    return registry_pb2.Alias(
        name=a.name,
        version=f"models/{a.model_id}/versions/{a.version}",
        updated_by=a.updated_by,
        reason=a.reason,
        update_time=ts(a.update_time),
        etag=a.etag,
    )


def alias_event_to_proto(e: AliasEvent) -> registry_pb2.AliasEvent:
    def ver(n: int | None) -> str:
        return f"models/{e.model_id}/versions/{n}" if n is not None else ""

    return registry_pb2.AliasEvent(
        alias=f"models/{e.model_id}/aliases/{e.alias}",
        version=ver(e.version),
        previous_version=ver(e.previous_version),
        actor=e.actor,
        reason=e.reason,
        time=ts(e.time),
    )


def blob_to_proto(b: Blob) -> blobs_pb2.Blob:
    return blobs_pb2.Blob(
        name=b.name,
        sha256=b.sha256,
        size_bytes=b.size_bytes,
        media_type=b.media_type,
        created_by=b.created_by,
        create_time=ts(b.create_time),
    )


def operation_to_proto(o: Operation) -> operations_pb2.Operation:
    out = operations_pb2.Operation(
        name=o.name,
        kind=o.kind,
        target=o.target,
        done=o.done,
        progress=o.progress,
        progress_message=o.progress_message,
        created_by=o.created_by,
        create_time=ts(o.create_time),
        update_time=ts(o.update_time),
        owner=o.owner,
    )
    if o.error is not None:
        out.error.CopyFrom(
            operations_pb2.OperationError(
                code=o.error.code, reason=o.error.reason, message=o.error.message
            )
        )
    if o.result_type:
        out.result.CopyFrom(any_pb2.Any(type_url=o.result_type, value=o.result))
    if o.metadata:
        meta = struct_pb2.Struct()
        meta.update(o.metadata)
        out.metadata.CopyFrom(meta)
    return out
