"""Sticky traffic routing: which arm answers a request, and whether it is shadowed.

A request's *routing key* is its ``routing_key`` parameter (a non-empty string or an
integer), else its OIP ``id``. The key is hashed (BLAKE2b, keyed by the rollout id and the
purpose) to one of 10,000 buckets; the candidate answers buckets below ``candidate_percent``
x 100, so the same key always reaches the same arm within a rollout on every replica, and a
canary step that raises the percent only moves keys from the champion to the candidate. Shadow
sampling uses its own bucket of the same key. Requests without any key are routed at random.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from modelplane.errors import InvalidArgument

BUCKETS = 10_000
PARAMETER = "routing_key"
_KEY_KINDS = ("string_param", "int64_param", "uint64_param")


def routing_key(request: Any) -> bytes | None:
    """The request's routing key as bytes; None when it has neither parameter nor id. An empty
    string parameter is no key (it would send every such request to one arm): the id decides.

    INVALID_ARGUMENT (``INVALID_PARAMETER``) when ``routing_key`` is not a string or integer.
    """
    params = request.parameters
    if params and PARAMETER in params:
        value = params[PARAMETER]
        kind = value.WhichOneof("parameter_choice")
        if kind not in _KEY_KINDS:
            raise InvalidArgument(
                f"parameter {PARAMETER!r} must be a string or an integer, not "
                f"{kind or 'empty'}; send the user, session or entity id the split sticks to",
                reason="INVALID_PARAMETER",
                metadata={"parameter": PARAMETER},
            )
        key = getattr(value, kind)
        if not isinstance(key, str):
            return str(key).encode()
        if key:
            return key.encode()
    rid = request.id
    return rid.encode() if rid else None


class Splitter:
    """The hash buckets of one rollout: candidate share and shadow sampling."""

    __slots__ = ("_arm_salt", "_candidate", "_shadow", "_shadow_salt")

    def __init__(self, rollout_id: str, candidate_percent: float, shadow_fraction: float) -> None:
        salt = hashlib.blake2b(rollout_id.encode(), digest_size=16).digest()
        self._arm_salt = salt[:8]
        self._shadow_salt = salt[8:]
        self._candidate = round(min(max(candidate_percent, 0.0), 100.0) * (BUCKETS // 100))
        self._shadow = round(min(max(shadow_fraction, 0.0), 1.0) * BUCKETS)

    @property
    def splits(self) -> bool:
        """Whether some traffic goes to the candidate."""
        return self._candidate > 0

    @property
    def shadows(self) -> bool:
        """Whether some champion traffic is copied to the shadow."""
        return self._shadow > 0

    def candidate(self, key: bytes | None) -> bool:
        """Whether ``key`` is answered by the candidate."""
        if self._candidate <= 0:
            return False
        if self._candidate >= BUCKETS:
            return True
        return _bucket(key, self._arm_salt) < self._candidate

    def shadowed(self, key: bytes | None) -> bool:
        """Whether ``key``'s champion answer is also computed by the shadow."""
        if self._shadow <= 0:
            return False
        if self._shadow >= BUCKETS:
            return True
        return _bucket(key, self._shadow_salt) < self._shadow


def bucket(key: bytes, rollout_id: str = "") -> int:
    """The arm bucket (0..9999) of ``key`` in rollout ``rollout_id`` (for tests and tools)."""
    salt = hashlib.blake2b(rollout_id.encode(), digest_size=16).digest()[:8]
    return _bucket(key, salt)


def _bucket(key: bytes | None, salt: bytes) -> int:
    if key is None:
        return random.randrange(BUCKETS)
    digest = hashlib.blake2b(key, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little") % BUCKETS
