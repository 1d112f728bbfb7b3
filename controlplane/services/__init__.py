"""Domain services: one per area, shared by the gRPC servicers, local tools and tests."""

from controlplane.services.blobs import BlobService
from controlplane.services.models import ModelService
from controlplane.services.operations import OperationService
from controlplane.services.versions import NewDataset, NewVersion, VersionService

__all__ = [
    "BlobService",
    "ModelService",
    "NewDataset",
    "NewVersion",
    "OperationService",
    "VersionService",
]
