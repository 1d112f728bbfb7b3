"""Plain domain objects of the control plane, independent of gRPC and SQL."""

from controlplane.domain.objects import (
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

__all__ = [
    "Alias",
    "AliasEvent",
    "Artifact",
    "BaselineRef",
    "Blob",
    "Column",
    "DatasetRef",
    "Lineage",
    "Model",
    "ModelVersion",
    "Operation",
    "OperationError",
    "Signature",
    "TensorSpec",
    "VersionState",
]
