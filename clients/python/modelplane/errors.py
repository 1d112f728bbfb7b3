"""Errors with a transport-neutral code, shared by the servers and the SDK.

A server raises these; one interceptor maps ``code`` to a gRPC status through
:data:`GRPC_CODES` and attaches a ``google.rpc.ErrorInfo`` carrying ``reason``. The SDK turns a
failed call back into the same class by its code (never by a class name sent over the wire).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "modelplane.dev"


class Code(enum.Enum):
    """Transport-neutral error codes."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


#: The one table from neutral codes to gRPC status codes.
GRPC_CODES: Mapping[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.value] for code in Code}


class ModelplaneError(Exception):
    """Base of every error Modelplane raises on purpose.

    ``reason`` is an UPPER_SNAKE identifier a program can branch on; ``message`` is for a
    person and says what to do; ``metadata`` adds short string facts (the field, the limit).
    """

    code: Code = Code.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.value} ({self.reason}): {self.message}"


class InvalidArgument(ModelplaneError):
    """The request is malformed or names something invalid."""

    code = Code.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(ModelplaneError):
    """The named resource does not exist."""

    code = Code.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ModelplaneError):
    """A resource with that name exists already."""

    code = Code.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ModelplaneError):
    """The system is not in a state that allows the operation."""

    code = Code.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ModelplaneError):
    """A concurrent change won (stale etag); read again and retry."""

    code = Code.ABORTED
    default_reason = "ETAG_MISMATCH"


class PermissionDenied(ModelplaneError):
    """The caller is known but may not do this."""

    code = Code.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ModelplaneError):
    """The caller could not be identified."""

    code = Code.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(ModelplaneError):
    """A limit was hit (size, queue, quota)."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ModelplaneError):
    """The deadline passed before the work could be done."""

    code = Code.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(ModelplaneError):
    """The caller cancelled the request."""

    code = Code.CANCELLED
    default_reason = "CANCELLED"


class Unimplemented(ModelplaneError):
    """The method is not offered by this server."""

    code = Code.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Unavailable(ModelplaneError):
    """The server cannot be reached or is not ready; retrying may help."""

    code = Code.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Internal(ModelplaneError):
    """Something broke on the server; details are in its log under the request id."""

    code = Code.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[Code, type[ModelplaneError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Unavailable,
        Internal,
    )
}


#: What an error may take in gRPC metadata, which clients cap at 8 KiB before they start
#: refusing statuses (at random up to 16 KiB): the message as ``grpc-message`` sends it
#: (percent-encoded: three characters for each byte outside printable ASCII) and the ErrorInfo
#: as serialized (it travels in ``grpc-status-details-bin`` with the message again, base64).
MAX_MESSAGE_BYTES = 2048
MAX_INFO_BYTES = 1024
MAX_METADATA_VALUE_BYTES = 256


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _sent_size(text: str) -> int:
    """Characters of ``text`` once percent-encoded for ``grpc-message``."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode("utf-8"))


def _bounded(text: str, limit: int, size: Callable[[str], int] = _utf8_size) -> str:
    """``text``, cut (ending in ``...``) to a ``size`` of at most ``limit``."""
    if size(text) <= limit:
        return text
    out, used = [], 3
    for ch in text:
        used += size(ch)
        if used > limit:
            break
        out.append(ch)
    return "".join(out) + "..."


def to_status(error: ModelplaneError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with ErrorInfo) a server sends for ``error``; an overlong
    message or metadata is cut (a message should name what the caller sent, not echo all of
    it), so that every error reaches the caller with its code and reason."""
    info = error_details_pb2.ErrorInfo(reason=error.reason[:128], domain=ERROR_DOMAIN)
    for key, value in error.metadata.items():
        key = _bounded(key, 64)
        info.metadata[key] = _bounded(value, MAX_METADATA_VALUE_BYTES)
        if info.ByteSize() > MAX_INFO_BYTES:
            del info.metadata[key]
            break
    message = _bounded(error.message, MAX_MESSAGE_BYTES, _sent_size)
    status = status_pb2.Status(code=GRPC_CODES[error.code].value[0], message=message)
    status.details.add().Pack(info)
    return status


def to_grpc_status(error: ModelplaneError) -> grpc.Status:
    """``error`` as a status object for ``context.abort_with_status``."""
    return rpc_status.to_status(to_status(error))


def abort(context: grpc.ServicerContext, error: ModelplaneError) -> NoReturn:
    """End the call of ``context`` with ``error`` (its code, message and ErrorInfo)."""
    context.abort_with_status(to_grpc_status(error))
    raise AssertionError("abort_with_status returned")


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if the server attached one.

    None as well when the status the call ended with is not the one the server sent: a status
    whose metadata outgrew what the client accepts ends as RESOURCE_EXHAUSTED with the
    server's detail still attached, which ``rpc_status`` refuses with ValueError.
    """
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, DecodeError):  # DecodeError: a detail that is not a Status
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def from_rpc_error(error: grpc.RpcError) -> ModelplaneError:
    """Rebuild the neutral error from a failed gRPC call."""
    status_code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message = error.details() or status_code.name  # type: ignore[attr-defined]
    try:
        code = Code(status_code.name)
    except ValueError:
        code = Code.INTERNAL
    info = error_info(error)
    cls = _BY_CODE.get(code, Internal)
    if info is None:
        return cls(message, reason=status_code.name)
    return cls(message, reason=info.reason, metadata=dict(info.metadata))
