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

import re

import grpc

from controlplane.auth.permissions import BUILT_IN_ROLES
from modelplane.errors import InvalidArgument
from modelplane.server.context import RequestContext
from modelplane.server.interceptor import anonymous_loopback

ROLES_METADATA_KEY = "x-modelplane-roles"
MAX_ROLES = 32
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
#: What a role name looks like, for messages.
ROLE_RULE = (
    f"role names match {ROLE_NAME.pattern} once lower-cased (a letter, then up to 62 letters, "
    f"digits and ._-), and a caller claims at most {MAX_ROLES}"
)
#: The most malformed names, and the characters of each, an INVALID_ROLES error shows (its
#: message and metadata travel back in the call's trailers, which a client takes up to 8 KiB of).
_SHOWN_NAMES = 5
_SHOWN_CHARS = 64


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


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_CHARS else f"{name[:_SHOWN_CHARS]}..."


def claimed_roles(text: str) -> tuple[str, ...]:
    """The roles a client claims in ``x-modelplane-roles`` (``"Risk, ml-lead"`` →
    ``("ml-lead", "risk")``): stripped, lower-cased, distinct and sorted, empty entries left
    out. InvalidArgument (reason INVALID_ROLES, ``metadata["field"]`` = ``roles``) for a name
    that is not a role name (``metadata["invalid_roles"]``: those names, comma-separated) or
    more than :data:`MAX_ROLES` distinct names (``metadata["count"]``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not ROLE_NAME.fullmatch(n.lower())]
    if bad:
        shown = [_shown(n) for n in bad[:_SHOWN_NAMES]]
        listed = ", ".join(repr(n) for n in shown) + (
            " and others" if len(bad) > len(shown) else ""
        )
        what = (
            f"claimed role {listed} is not a role name"
            if len(bad) == 1
            else (f"claimed roles {listed} are not role names")
        )
        raise InvalidArgument(
            f"{what} (metadata {ROLES_METADATA_KEY}): {ROLE_RULE}",
            reason="INVALID_ROLES",
            metadata={"field": "roles", "invalid_roles": ",".join(shown)},
        )
    roles = tuple(sorted({n.lower() for n in names}))
    if len(roles) > MAX_ROLES:
        raise InvalidArgument(
            f"{len(roles)} roles claimed (metadata {ROLES_METADATA_KEY}): {ROLE_RULE}",
            reason="INVALID_ROLES",
            metadata={"field": "roles", "count": str(len(roles))},
        )
    return roles


def principal_with_roles(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
    """The principal the client names, with the roles it claims (access control off);
    InvalidArgument for a principal or roles the server cannot take as given."""
    ctx = anonymous_loopback(metadata, context)
    return RequestContext(
        principal=ctx.principal, roles=claimed_roles(metadata.get(ROLES_METADATA_KEY, ""))
    )
