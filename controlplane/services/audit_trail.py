"""The audit trail as a service: filtered reads, a JSON Lines export, signed checkpoints and
verification of the chain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import audit
from controlplane.auth.policy import listed_models
from controlplane.names import check_text
from controlplane.store import Store
from modelplane.errors import Cancelled, DeadlineExceeded, InvalidArgument, ModelplaneError
from modelplane.server.context import current_context

log = structlog.get_logger("modelplane.controlplane")

EXPORT_FORMATS = ("jsonl",)
#: Lines per chunk of an export stream.
EXPORT_BATCH = 500


#: The collections whose resources the audit trail records events about.
AUDITED_COLLECTIONS = ("models", "policies", "deployments", "blobs", "operations")


def check_resource_filter(resource: str) -> None:
    """INVALID_ARGUMENT (INVALID_RESOURCE_FILTER) for a ``resource`` filter that names no
    resource (``models/fraud``, ``deployments/live``, a collection such as ``policies``): a
    misspelt one would otherwise answer with no events, which reads as "no activity"."""
    if not resource:
        return
    collection = resource.split("/", 1)[0]
    if collection in AUDITED_COLLECTIONS and "//" not in resource.rstrip("/"):
        return
    raise InvalidArgument(
        f"resource {resource[:100]!r} names no resource: give a resource name, such as "
        "models/fraud, models/fraud/versions/3 or deployments/fraud-live, or a whole collection "
        f"({', '.join(AUDITED_COLLECTIONS)})",
        reason="INVALID_RESOURCE_FILTER",
        metadata={"resource": resource[:100]},
    )


class AuditTrailService:
    """Reads, exports, checkpoints and verifies the audit chain."""

    def __init__(self, store: Store, key: Ed25519PrivateKey) -> None:
        """``key`` signs checkpoints; a :class:`controlplane.audit.SigningKeys` also verifies
        those signed by the retired keys it holds."""
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
        check_resource_filter(resource)
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

    def verify(
        self, checkpoint: audit.Checkpoint | None = None, wanted: Callable[[], bool] | None = None
    ) -> audit.VerifyResult:
        """Recompute the chain; with a checkpoint, check it and its signature (by the key it
        names: this server's, or a retired one) too.

        ``wanted`` (the call's ``is_active``) is asked as the walk goes: once the caller's
        deadline has passed or it cancelled, the walk stops and the call ends with
        ``DEADLINE_EXCEEDED`` or ``CANCELLED`` instead of walking on for no one.
        """
        try:
            return audit.verify(
                self.store, checkpoint, self.key if checkpoint else None, wanted=wanted
            )
        except audit.VerifyStopped as stopped:
            error = _stopped_error(stopped.checked)
            log.info(
                "audit verify stopped: the caller no longer waits",
                code=error.code.value,
                checked=stopped.checked,
            )
            raise error from None


def _stopped_error(checked: int) -> ModelplaneError:
    """The error a verify ends with when its caller stopped waiting after ``checked`` events:
    its deadline passed, or it cancelled."""
    deadline = current_context().deadline
    # gRPC ends the call at its deadline by its own clock: allow for the two clocks' skew.
    if deadline is not None and time.monotonic() >= deadline - 0.1:
        return DeadlineExceeded(
            f"the call's deadline passed after {checked} events of the audit trail were "
            "verified; give the call a longer deadline (modelplane --timeout 2h audit verify), or "
            "verify an export offline (modelplane audit export --out FILE, then modelplane audit "
            "verify --export FILE)",
            reason="VERIFY_DEADLINE_EXCEEDED",
        )
    return Cancelled(
        f"the call was cancelled after {checked} events of the audit trail were verified",
        reason="VERIFY_CANCELLED",
    )
