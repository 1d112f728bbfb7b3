"""Modelplane: model registry, governance and rollouts, with an inference sidecar.

The library users import: :class:`Client` (the SDK the CLI itself uses), the errors it raises,
and the generated stubs under :mod:`modelplane.v1`.
"""

from modelplane._client import CallDeadlineExceeded, Client, ServerUnreachable
from modelplane.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ModelplaneError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CallDeadlineExceeded",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "ModelplaneError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerUnreachable",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "__version__",
]
