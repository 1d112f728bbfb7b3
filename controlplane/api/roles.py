"""Roles of the caller: role names, and where roles come from.

With access control on, roles come from the caller's credentials (a token entry or a JWT
claim, see :mod:`controlplane.auth`); the authorizer puts those that hold for the request's
model into the request context, and the ``x-modelplane-roles`` metadata is ignored.

With access control off (loopback only, or ``--auth none``), the client names its roles in
``x-modelplane-roles`` (comma-separated) next to its principal in ``x-modelplane-principal``.
The server believes both, so they prove nothing; they let separation of duties and role
requirements of policies be exercised on a developer's machine. A claimed name that is not a
role name, or more than :data:`MAX_ROLES` names, refuse the call (:func:`claimed_roles`): a
role dropped there would make a policy's role requirement fail with no word of why. Roles from
an identity provider's claim are cleaned instead (:func:`clean_roles`): its groups are not the
caller's to fix.
"""

from __future__ import annotations

import grpc

from controlplane.auth.permissions import BUILT_IN_ROLES
from modelplane.ids import MAX_ROLES, ROLE_NAME, claimed_role_names
from modelplane.server.context import RequestContext
from modelplane.server.interceptor import anonymous_loopback

ROLES_METADATA_KEY = "x-modelplane-roles"


def parse_roles(text: str) -> tuple[str, ...]:
    """``"risk, ml-lead"`` → ``("ml-lead", "risk")``; malformed names are dropped (for an
    identity provider's claim; claimed roles go through :func:`claimed_roles`)."""
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


def claimed_roles(text: str) -> tuple[str, ...]:
    """The roles a client claims in ``x-modelplane-roles`` (``"Risk, ml-lead"`` →
    ``("ml-lead", "risk")``), checked as :func:`modelplane.ids.claimed_role_names` checks
    them: a name that is not a role name, or too many, is InvalidArgument (INVALID_ROLES)."""
    return claimed_role_names(text.split(","), f" (metadata {ROLES_METADATA_KEY})")


def principal_with_roles(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
    """The principal the client names, with the roles it claims (access control off);
    InvalidArgument for a principal or roles the server cannot take as given."""
    ctx = anonymous_loopback(metadata, context)
    return RequestContext(
        principal=ctx.principal, roles=claimed_roles(metadata.get(ROLES_METADATA_KEY, ""))
    )
