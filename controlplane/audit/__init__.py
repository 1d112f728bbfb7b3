"""The audit trail: an append-only, hash-chained log of every mutation, in the database.

:func:`install` registers the mutation hook on a :class:`~controlplane.store.Store`; from then
on every committed mutation appends one event in the same transaction (a failed transaction
appends nothing). :func:`checkpoint` signs the chain head with the server's Ed25519 key;
:func:`verify` recomputes the chain and names the first broken event. The server's keys
(:class:`SigningKeys`) are its active signing key and the public keys of keys it signed with
before, whose signatures stay valid.
"""

from controlplane.audit._canonical import GENESIS_HASH, canonical_json, event_hash, object_digest
from controlplane.audit._chain import (
    AUDIT_LOCK_KEY,
    UNREADABLE_TIME,
    AuditEvent,
    append_events,
    install,
)
from controlplane.audit._query import export_jsonl, iter_events, list_events
from controlplane.audit._signing import (
    Checkpoint,
    SigningKeys,
    check_checkpoint,
    checkpoint,
    key_id,
    load_or_create_signing_key,
    load_signing_key,
    load_signing_keys,
    load_verification_keys,
    public_key_for,
    public_key_pem,
    shown_key_id,
)
from controlplane.audit._verify import Problem, VerifyResult, VerifyStopped, verify

__all__ = [
    "AUDIT_LOCK_KEY",
    "GENESIS_HASH",
    "UNREADABLE_TIME",
    "AuditEvent",
    "Checkpoint",
    "Problem",
    "SigningKeys",
    "VerifyResult",
    "VerifyStopped",
    "append_events",
    "canonical_json",
    "check_checkpoint",
    "checkpoint",
    "event_hash",
    "export_jsonl",
    "install",
    "iter_events",
    "key_id",
    "list_events",
    "load_or_create_signing_key",
    "load_signing_key",
    "load_signing_keys",
    "load_verification_keys",
    "object_digest",
    "public_key_for",
    "public_key_pem",
    "shown_key_id",
    "verify",
]
