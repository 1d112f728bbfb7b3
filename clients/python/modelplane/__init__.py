"""Modelplane: model registry, governance and rollouts, with an inference sidecar.

The library users import: :class:`Client` (the SDK the CLI itself uses), the errors it raises,
and the generated stubs under :mod:`modelplane.v1`.

The names below are imported on first use (PEP 562), not with the package: ``import
modelplane.cli`` must not load gRPC before the CLI can take charge of Ctrl-C, and the servers
import submodules that need neither.
"""

from __future__ import annotations

import importlib

#: Type checkers take this as true; no ``import typing`` at run time (it costs milliseconds of
#: the CLI's start, before Ctrl-C is handled).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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

#: Each public name and the module that defines it.
_SOURCES = {
    **dict.fromkeys(("CallDeadlineExceeded", "Client", "ServerUnreachable"), "modelplane._client"),
    **dict.fromkeys(
        (
            "Aborted",
            "AlreadyExists",
            "Cancelled",
            "DeadlineExceeded",
            "FailedPrecondition",
            "Internal",
            "InvalidArgument",
            "ModelplaneError",
            "NotFound",
            "PermissionDenied",
            "ResourceExhausted",
            "Unauthenticated",
            "Unavailable",
            "Unimplemented",
        ),
        "modelplane.errors",
    ),
}


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})


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
