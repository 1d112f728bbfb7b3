"""The audit trail as a service: filtered reads, a JSON Lines export, signed checkpoints and
verification of the chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import audit
from controlplane.auth.policy import listed_models
from controlplane.names import check_text
from controlplane.store import Store
from modelplane.errors import InvalidArgument
from modelplane.server.context import current_context

EXPORT_FORMATS = ("jsonl",)
#: Lines per chunk of an export stream.
EXPORT_BATCH = 500


class AuditTrailService:
    """Reads, exports, checkpoints and verifies the audit chain."""

    def __init__(self, store: Store, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key

    def list_events(
        self,
        resource: str = "",
        actor: str = "",
        since: datetime | None = None,
        page_size_: int = 0,
        page_token: str = "",
    ) -> tuple[list[audit.AuditEvent], str]:
        check_text(resource, "resource", 1000, single_line=True)
        check_text(actor, "actor", 200, single_line=True)
        return audit.list_events(
            self.store,
            resource or None,
            actor or None,
            since,
            page_size_=page_size_,
            page_token=page_token,
            models=listed_models(current_context()),
        )

    def export(self, fmt: str = "jsonl") -> Iterator[bytes]:
        """The whole trail as JSON Lines, in chunks of whole lines."""
        fmt = fmt or "jsonl"
        if fmt not in EXPORT_FORMATS:
            raise InvalidArgument(
                f"export format {fmt[:20]!r} is not supported; use jsonl", reason="INVALID_FORMAT"
            )
        return self._lines()

    def _lines(self) -> Iterator[bytes]:
        batch: list[str] = []
        for event in audit.iter_events(self.store):
            batch.append(json.dumps(event.to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
            if len(batch) >= EXPORT_BATCH:
                yield "".join(batch).encode("utf-8")
                batch = []
        if batch:
            yield "".join(batch).encode("utf-8")

    def checkpoint(self) -> audit.Checkpoint:
        """Sign the current chain head with the server key."""
        return audit.checkpoint(self.store, self.key)

    def verify(self, checkpoint: audit.Checkpoint | None = None) -> audit.VerifyResult:
        """Recompute the chain; with a checkpoint, check it and its signature too."""
        return audit.verify(self.store, checkpoint, self.key.public_key() if checkpoint else None)
