"""Roles of the caller while access control is off.

The client names its roles in the ``x-modelplane-roles`` metadata (comma-separated), next to
the principal in ``x-modelplane-principal``. Both are a stand-in until authentication exists:
the server believes them, so they prove nothing about who is calling.
"""

from __future__ import annotations

import re

import grpc

from modelplane.server.context import RequestContext
from modelplane.server.interceptor import anonymous_loopback

ROLES_METADATA_KEY = "x-modelplane-roles"
MAX_ROLES = 32
_ROLE = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def parse_roles(text: str) -> tuple[str, ...]:
    """``"risk, ml-lead"`` → ``("ml-lead", "risk")``; malformed names are dropped."""
    names = {r.strip().lower() for r in text.split(",") if r.strip()}
    return tuple(sorted(n for n in names if _ROLE.match(n)))[:MAX_ROLES]


def principal_with_roles(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
    """The principal the client names, with the roles it claims."""
    ctx = anonymous_loopback(metadata, context)
    return RequestContext(
        principal=ctx.principal, roles=parse_roles(metadata.get(ROLES_METADATA_KEY, ""))
    )
