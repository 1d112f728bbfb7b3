"""Canonical JSON and the digests of the audit trail.

The one implementation lives in the client package, :mod:`modelplane.audit_chain` (standard
library only), so that an export verified offline is hashed by the same code that hashed it
here; this module re-exports it for the control plane.
"""

from __future__ import annotations

from modelplane.audit_chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    canonical_json,
    checkpoint_payload,
    event_hash,
    object_digest,
    plain,
    utc_text,
)

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "canonical_json",
    "checkpoint_payload",
    "event_hash",
    "object_digest",
    "plain",
    "utc_text",
]
