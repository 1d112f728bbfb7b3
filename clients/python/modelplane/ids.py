"""Resource identifiers: lowercase RFC-1034 labels (AIP-122), checked alike by the control
plane and by clients that name resources before they reach it."""

from __future__ import annotations

import re

_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")

#: What a valid identifier looks like, for messages.
ID_RULE = "1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"


def is_id(value: str) -> bool:
    """Whether ``value`` is a valid identifier: :data:`ID_RULE`."""
    return _ID.fullmatch(value) is not None
