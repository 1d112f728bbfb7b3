"""The calling principal and request identifiers of the RPC being served."""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelplane.ids import is_principal

#: Metadata key in which clients name themselves while access control is off.
PRINCIPAL_METADATA_KEY = "x-modelplane-principal"
#: Metadata key carrying a caller-chosen request id for log correlation.
REQUEST_ID_METADATA_KEY = "x-request-id"
TRACEPARENT_METADATA_KEY = "traceparent"

#: A W3C ``traceparent``: version, trace id, parent id and flags, in lowercase hex; a version
#: after 00 may append fields of its own, after a dash.
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?", re.DOTALL
)
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16
#: Names the server itself acts under (automatic rollout moves, work outside any call): no
#: credentials may prove them, in any case (without access control callers name themselves,
#: and any name proves nothing).
RESERVED_PRINCIPALS = frozenset({"modelplane", "system"})


@dataclass(frozen=True)
class Grant:
    """Roles a caller holds, on every model (``models`` empty) or only on the models named."""

    roles: tuple[str, ...]
    models: tuple[str, ...] = ()

    @property
    def scoped(self) -> bool:
        """True when the roles hold only on :attr:`models`."""
        return bool(self.models)


@dataclass(frozen=True)
class RequestContext:
    """Who is calling and how to find this request in the logs.

    ``roles`` are the roles that count for this request (for an authenticated caller, those of
    its grants that cover the model the request is about); ``grants`` is everything the
    caller's credentials grant, empty while access control is off; ``authenticated`` says
    whether the principal was proven by credentials rather than named by the client.
    ``resource_check``, when the authorizer sets it, refuses (by raising) a resource the
    request names indirectly (an operation, by id) that lies outside the caller's scope: a
    service that acts on such a resource calls it before acting.
    """

    principal: str = "anonymous"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    trace_id: str = ""
    method: str = ""
    roles: tuple[str, ...] = ()
    grants: tuple[Grant, ...] = ()
    authenticated: bool = False
    resource_check: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    #: When (``time.monotonic()``) the caller stops waiting: its gRPC deadline; None without
    #: one. Work that waits (for a write lock) gives up by then rather than go on unseen.
    deadline: float | None = None


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "modelplane_request_context"
)


def current_context() -> RequestContext:
    """The context of the RPC being served on this thread (a fresh one outside RPCs)."""
    try:
        return _current.get()
    except LookupError:
        return RequestContext(principal="system")


def set_context(ctx: RequestContext) -> contextvars.Token[RequestContext]:
    """Make ``ctx`` current; returns the token to reset it."""
    return _current.set(ctx)


def reset_context(token: contextvars.Token[RequestContext]) -> None:
    """Restore the context that was current before :func:`set_context`."""
    _current.reset(token)


def trace_id_from(traceparent: str | None) -> str:
    """The trace id of a W3C Trace Context ``traceparent`` header, or empty when the header
    is absent or must be ignored.

    As the specification says: every field is lowercase hex (a header with uppercase digits
    does not match, and is ignored, not lowercased); version ``ff`` and all-zero trace or
    parent ids are invalid; version ``00`` is exactly its four fields; a later version is read
    by its first four fields, what follows them after a dash being left alone. Spaces and tabs
    around the value (HTTP's optional whitespace) are not part of it.
    """
    if not traceparent:
        return ""
    match = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if match is None:
        return ""
    version, trace_id, parent_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return ""
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return ""
    return trace_id


def clean_principal(name: str | None) -> str | None:
    """``name`` when it is a usable principal name (the whole of it: a trailing newline is
    not), else None."""
    return name if is_principal(name) else None


def reserved_principal(name: str) -> bool:
    """Whether ``name`` is one the server acts under (:data:`RESERVED_PRINCIPALS`)."""
    return name.lower() in RESERVED_PRINCIPALS


def same_principal(a: str, b: str) -> bool:
    """Whether two principal names name the same person: compared without regard to case,
    as identity providers compare user names."""
    return a.casefold() == b.casefold()
