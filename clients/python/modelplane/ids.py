"""Resource identifiers (lowercase RFC-1034 labels, AIP-122) and principal names, checked
alike by the servers and by clients that send them."""

from __future__ import annotations

import re

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
