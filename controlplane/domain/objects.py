"""Dataclasses for registry resources. Times are timezone-aware UTC datetimes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class VersionState(enum.Enum):
    """Governance state of a version."""

    REGISTERED = "REGISTERED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True)
class Model:
    """A registered model: a named line of versions."""

    id: str
    description: str
    labels: dict[str, str]
    intended_use: str
    limitations: str
    latest_version: int
    created_by: str
    create_time: datetime
    update_time: datetime
    etag: str

    @property
    def name(self) -> str:
        return f"models/{self.id}"


@dataclass(frozen=True)
class TensorSpec:
    """One signature tensor: OIP datatype and shape (-1 for dynamic dims)."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class Artifact:
    """The stored ONNX file and what its header says."""

    sha256: str
    size_bytes: int
    format: str
    ir_version: int
    opset: int
    producer_name: str
    producer_version: str


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class DatasetRef:
    """A dataset attached to a version, with what the server read from it."""

    role: str
    source: str
    sha256: str
    row_count: int
    schema: list[Column]
    format: str


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: run, data, parameters, code and environment."""

    training_run_id: str = ""
    datasets: list[DatasetRef] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    code_repository: str = ""
    code_commit: str = ""
    python_version: str = ""
    platform: str = ""
    packages: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class BaselineRef:
    """The training-data profile blob of a version."""

    sha256: str
    row_count: int
    feature_count: int


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    model_id: str
    version: int
    description: str
    labels: dict[str, str]
    state: VersionState
    artifact: Artifact
    signature: Signature
    lineage: Lineage
    feature_names: list[str]
    label_column: str
    baseline: BaselineRef | None
    aliases: list[str]
    created_by: str
    create_time: datetime
    update_time: datetime
    etag: str

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}"


@dataclass(frozen=True)
class Alias:
    """Where an alias points."""

    model_id: str
    alias: str
    version: int
    updated_by: str
    reason: str
    update_time: datetime
    #: Changes with every move (a new update time each, even to the same version).
    etag: str

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/aliases/{self.alias}"


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias; ``version`` is None when the alias was deleted."""

    model_id: str
    alias: str
    version: int | None
    previous_version: int | None
    actor: str
    reason: str
    time: datetime


@dataclass(frozen=True)
class Blob:
    """A stored content-addressed blob."""

    sha256: str
    size_bytes: int
    media_type: str
    created_by: str
    create_time: datetime

    @property
    def name(self) -> str:
        return f"blobs/{self.sha256}"


@dataclass(frozen=True)
class OperationError:
    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class Operation:
    """A persisted long-running operation."""

    id: str
    kind: str
    target: str
    done: bool
    progress: float
    progress_message: str
    error: OperationError | None
    result_type: str
    result: bytes
    metadata: dict[str, Any]
    created_by: str
    create_time: datetime
    update_time: datetime
    owner: str
    lease_expire_time: datetime | None

    @property
    def name(self) -> str:
        return f"operations/{self.id}"
