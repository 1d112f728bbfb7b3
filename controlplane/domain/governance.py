"""Dataclasses for evaluation and governance resources: evaluations, policies, gate decisions
and approvals. Times are timezone-aware UTC datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Evaluation:
    """A stored evaluation report of one version on one dataset.

    ``report`` is the JSON form of :class:`controlplane.evaluation.EvaluationReport`;
    ``report_sha256`` is the digest of its canonical JSON; ``deltas`` are this evaluation's
    metrics minus those of ``compared_version`` (reached through the ``compare_to`` alias).
    """

    model_id: str
    version: int
    id: str
    dataset_sha256: str
    dataset_role: str
    label: str
    report: dict[str, Any]
    report_sha256: str
    compare_to: str
    compared_version: str
    deltas: dict[str, float | None]
    operation: str
    created_by: str
    create_time: datetime

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}/evaluations/{self.id}"

    @property
    def version_name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}"


@dataclass(frozen=True)
class Policy:
    """CEL rules bound to one target (an alias name or ``deployments/{d}``)."""

    id: str
    description: str
    target: str
    rules: list[str]
    revision: int
    created_by: str
    updated_by: str
    create_time: datetime
    update_time: datetime
    etag: str

    @property
    def name(self) -> str:
        return f"policies/{self.id}"


@dataclass(frozen=True)
class GateDecision:
    """One evaluation of a target's policy for a version, with every rule's result."""

    model_id: str
    version: int
    id: str
    target: str
    policy: str
    policy_revision: int
    evaluation: str
    passed: bool
    results: list[dict[str, Any]]
    evidence_sha256: str
    created_by: str
    create_time: datetime
    #: What ``delta`` was measured against: ``serving``, ``compared_version`` and
    #: ``evaluation`` of :class:`controlplane.services.evidence.Comparison` (empty for decisions
    #: recorded before the store kept it); and the digest of each part of ``evidence_sha256``
    #: (see :func:`controlplane.services.evidence.digest_parts`), so that a stale decision can
    #: say which part changed (absent for decisions recorded before they were kept).
    reference: dict[str, str] = field(default_factory=dict)

    @property
    def compared_version(self) -> str:
        return self.reference.get("compared_version", "")

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}/gateDecisions/{self.id}"


@dataclass(frozen=True)
class EvidenceItem:
    """A resource an approval signed for, with its digest."""

    resource: str
    sha256: str


@dataclass(frozen=True)
class Evidence:
    """What a gate decision or an approval rests on for one version and target."""

    artifact_sha256: str
    evaluations: list[EvidenceItem] = field(default_factory=list)
    policy: str = ""
    policy_revision: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Approval:
    """A signed approval or rejection of a version for a target."""

    model_id: str
    version: int
    id: str
    target: str
    decision: str
    comment: str
    approver: str
    roles: list[str]
    evidence: Evidence
    signature: str
    key_id: str
    create_time: datetime
    current: bool = False

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}/approvals/{self.id}"


@dataclass(frozen=True)
class SignatureCheck:
    """The check of one signed or digested record."""

    resource: str
    ok: bool
    message: str
