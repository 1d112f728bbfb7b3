"""Resource identifiers (lowercase RFC-1034 labels, AIP-122), principal names and role names,
checked alike by the servers and by clients that send them."""

from __future__ import annotations

import re
from collections.abc import Iterable

_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")

#: What a valid identifier looks like, for messages.
ID_RULE = (
    "1-63 lowercase ASCII letters, digits and '-', starting with a letter and not ending with '-'"
)


def is_id(value: str) -> bool:
    """Whether ``value`` is a valid identifier: :data:`ID_RULE`."""
    return _ID.fullmatch(value) is not None


_PRINCIPAL = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")

#: What a principal name looks like, for messages.
PRINCIPAL_RULE = "1-128 ASCII letters, digits and ._@:+-"


def is_principal(value: str | None) -> bool:
    """Whether ``value`` is a principal name (the whole of it: a trailing newline is not):
    :data:`PRINCIPAL_RULE`."""
    return bool(value) and _PRINCIPAL.fullmatch(value or "") is not None


#: Role names, checked once lower-cased, and how many one caller may hold or claim.
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
MAX_ROLES = 32
#: What a role name looks like, for messages.
ROLE_RULE = (
    f"role names match {ROLE_NAME.pattern} once lower-cased (a letter, then up to 62 letters, "
    f"digits and ._-), and a caller claims at most {MAX_ROLES}"
)
#: The most malformed names, and the characters of each, an INVALID_ROLES error shows (its
#: message and metadata travel back in the call's trailers, which a client takes up to 8 KiB of).
_SHOWN_NAMES = 5
_SHOWN_CHARS = 64


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_CHARS else f"{name[:_SHOWN_CHARS]}..."


def claimed_role_names(names: Iterable[str], where: str = "") -> tuple[str, ...]:
    """Roles a caller claims: stripped, lower-cased, distinct and sorted, empty entries left
    out. InvalidArgument (reason INVALID_ROLES, ``metadata["field"]`` = ``roles``) for a name
    that is not a role name (``metadata["invalid_roles"]``: those names, comma-separated) or
    more than :data:`MAX_ROLES` distinct names (``metadata["count"]``); ``where`` (such as
    `` (metadata x-modelplane-roles)``) follows what the message names."""
    # Imported here: this module stays free of gRPC, which modelplane.errors loads.
    from modelplane.errors import InvalidArgument

    stripped = [n.strip() for n in names if n.strip()]
    bad = [n for n in stripped if not ROLE_NAME.fullmatch(n.lower())]
    if bad:
        shown = [_shown(n) for n in bad[:_SHOWN_NAMES]]
        listed = ", ".join(repr(n) for n in shown) + (
            " and others" if len(bad) > len(shown) else ""
        )
        what = (
            f"claimed role {listed} is not a role name"
            if len(bad) == 1
            else f"claimed roles {listed} are not role names"
        )
        raise InvalidArgument(
            f"{what}{where}: {ROLE_RULE}",
            reason="INVALID_ROLES",
            metadata={"field": "roles", "invalid_roles": ",".join(shown)},
        )
    roles = tuple(sorted({n.lower() for n in stripped}))
    if len(roles) > MAX_ROLES:
        raise InvalidArgument(
            f"{len(roles)} roles claimed{where}: {ROLE_RULE}",
            reason="INVALID_ROLES",
            metadata={"field": "roles", "count": str(len(roles))},
        )
    return roles
