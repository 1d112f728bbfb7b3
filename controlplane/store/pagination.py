"""Page tokens for keyset pagination (AIP-158).

Clients treat a token as opaque, but it is base64 JSON that anyone holding it can read: the key
of the last entry of the page it follows. A list that shows a caller only some entries (one
whose roles hold on some models) must therefore select them in its query, never drop entries
from a page already cut, so that the key is that of an entry the caller was shown and a token
is handed out only when more of its entries follow.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from modelplane.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use: the default for 0, capped at the maximum; negative is refused."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            metadata={"field": "page_size"},
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query_hash(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def encode(query: dict[str, Any], last_key: list[Any]) -> str:
    """A token that resumes ``query`` after ``last_key``.

    ``query`` holds the list's arguments and its kind (``{"list": "approvals", "parent":
    ...}``): lists that take the same arguments (a version's evaluations and its approvals)
    must not take each other's tokens, whose keys would be read against another table."""
    payload = json.dumps({"q": _query_hash(query), "k": last_key}, default=str)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def malformed_token() -> InvalidArgument:
    """The error for a page token that no list handed out."""
    return InvalidArgument(
        "page_token is malformed; pass a next_page_token exactly as received, or start again "
        "without a token",
        reason="INVALID_PAGE_TOKEN",
        metadata={"field": "page_token"},
    )


#: The range of the integer columns a key may hold (SQL BIGINT, SQLite INTEGER).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _scalar(value: Any) -> bool:
    """Whether ``value`` can be bound as a key value on every backend."""
    if isinstance(value, str):
        # PostgreSQL text holds no NUL; a lone surrogate cannot be encoded for either backend.
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    # bool is an int to Python but never part of a key.
    return isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX


def decode(
    token: str, query: dict[str, Any], kinds: tuple[type, ...] | None = None
) -> list[Any] | None:
    """The key after which to resume, or None for the first page.

    A token is not signed, so a client can make one by hand: the key must be a non-empty list
    of strings (UTF-8, without NUL) and 64-bit integers, so that every backend can bind it, and
    with ``kinds`` (``(int,)``, ``(str, int)``) one value of each kind in turn. Lists read
    through ``repos._scan`` need no ``kinds``: it checks the key against the columns it orders
    by.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        key = payload["k"]
        same = payload["q"] == _query_hash(query)
    except (ValueError, KeyError, TypeError):
        raise malformed_token() from None
    if not same:
        raise InvalidArgument(
            "page_token belongs to a different query (filter or order changed); start again "
            "without a token",
            reason="INVALID_PAGE_TOKEN",
            metadata={"field": "page_token"},
        )
    if not (isinstance(key, list) and key and all(_scalar(v) for v in key)):
        raise malformed_token()
    if kinds is not None and (
        len(key) != len(kinds) or not all(isinstance(v, k) for v, k in zip(key, kinds, strict=True))
    ):
        raise malformed_token()
    return key
