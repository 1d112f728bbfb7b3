"""Roles of the caller: role names, and where roles come from.

With access control on, roles come from the caller's credentials (a token entry or a JWT
claim, see :mod:`controlplane.auth`); the authorizer puts those that hold for the request's
model into the request context, and the ``x-modelplane-roles`` metadata is ignored.

With access control off (loopback only, or ``--auth none``), the client names its roles in
``x-modelplane-roles`` (comma-separated) next to its principal in ``x-modelplane-principal``.
The server believes both, so they prove nothing; they let separation of duties and role
requirements of policies be exercised on a developer's machine.
"""

from __future__ import annotations

import re

import grpc

from controlplane.auth.permissions import BUILT_IN_ROLES
from modelplane.server.context import RequestContext
from modelplane.server.interceptor import anonymous_loopback

ROLES_METADATA_KEY = "x-modelplane-roles"
MAX_ROLES = 32
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def parse_roles(text: str) -> tuple[str, ...]:
    """``"risk, ml-lead"`` → ``("ml-lead", "risk")``; malformed names are dropped."""
    return clean_roles(text.split(","))


def clean_roles(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Distinct, lowercased, sorted role names; malformed ones are dropped. Beyond
    :data:`MAX_ROLES` (an identity provider's group claim may hold many) the built-in roles
    are kept and then the first others by name, so that a claim of many groups never loses
    ``viewer`` or ``sidecar`` to names that sort before them."""
    kept = {r.strip().lower() for r in names if isinstance(r, str) and r.strip()}
    valid = sorted(n for n in kept if ROLE_NAME.match(n))
    if len(valid) <= MAX_ROLES:
        return tuple(valid)
    built_in = [n for n in valid if n in BUILT_IN_ROLES]
    others = [n for n in valid if n not in BUILT_IN_ROLES][: MAX_ROLES - len(built_in)]
    return tuple(sorted(built_in + others))


def principal_with_roles(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
    """The principal the client names, with the roles it claims (access control off)."""
    ctx = anonymous_loopback(metadata, context)
    return RequestContext(
        principal=ctx.principal, roles=parse_roles(metadata.get(ROLES_METADATA_KEY, ""))
    )
