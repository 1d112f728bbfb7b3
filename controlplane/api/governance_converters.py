"""Evaluation, governance and audit domain objects to and from ``modelplane.v1`` messages."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from controlplane import audit
from controlplane.api.converters import ts
from controlplane.audit._canonical import plain, utc_text
from controlplane.domain.governance import Approval, Evaluation, GateDecision, Policy
from controlplane.services.model_cards import ModelCard
from modelplane.v1 import audit_pb2, evaluation_pb2, governance_pb2

EVALUATION_TYPE_URL = "type.googleapis.com/modelplane.v1.Evaluation"


def struct(value: Any) -> struct_pb2.Struct:
    """A JSON-ready mapping as a Struct (numbers become doubles)."""
    out = struct_pb2.Struct()
    if value:
        out.update(plain(value))
    return out


def _defined(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def evaluation_to_proto(e: Evaluation) -> evaluation_pb2.Evaluation:
    r = e.report
    return evaluation_pb2.Evaluation(
        name=e.name,
        dataset_sha256=e.dataset_sha256,
        dataset_role=e.dataset_role,
        label=e.label,
        task=str(r.get("task", "")),
        rows=int(r.get("rows", 0)),
        metrics=_defined(r.get("metrics") or {}),
        slices=struct(r.get("slices")),
        fairness=struct(r.get("fairness")),
        validation=struct(r.get("validation")),
        compared_version=e.compared_version,
        deltas=_defined(e.deltas),
        report_sha256=e.report_sha256,
        report=struct(r),
        operation=e.operation,
        created_by=e.created_by,
        create_time=ts(e.create_time),
        feature_names=list(r.get("feature_names") or []),
        compare_to=e.compare_to,
    )


def evaluation_result(e: Evaluation) -> tuple[str, bytes]:
    """An evaluation as an operation result (type URL and bytes of a packed Any)."""
    return EVALUATION_TYPE_URL, evaluation_to_proto(e).SerializeToString()


def policy_to_proto(p: Policy) -> governance_pb2.Policy:
    return governance_pb2.Policy(
        name=p.name,
        description=p.description,
        target=p.target,
        rules=p.rules,
        revision=p.revision,
        created_by=p.created_by,
        updated_by=p.updated_by,
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
        etag=p.etag,
    )


def decision_to_proto(d: GateDecision) -> governance_pb2.GateDecision:
    return governance_pb2.GateDecision(
        name=d.name,
        target=d.target,
        policy=d.policy,
        policy_revision=d.policy_revision,
        evaluation=d.evaluation,
        compared_version=d.compared_version,
        passed=d.passed,
        results=[
            governance_pb2.RuleResult(
                index=int(r.get("index", 0)),
                expression=str(r.get("expression", "")),
                outcome=str(r.get("outcome", "")),
                message=str(r.get("message", "")),
                values=struct(r.get("values")),
                missing=list(r.get("missing", [])),
            )
            for r in d.results
        ],
        evidence_sha256=d.evidence_sha256,
        created_by=d.created_by,
        create_time=ts(d.create_time),
    )


def approval_to_proto(a: Approval) -> governance_pb2.Approval:
    ev = a.evidence
    return governance_pb2.Approval(
        name=a.name,
        target=a.target,
        decision=a.decision,
        comment=a.comment,
        approver=a.approver,
        roles=a.roles,
        artifact_sha256=ev.artifact_sha256,
        evaluations=[
            governance_pb2.EvidenceItem(resource=i.resource, sha256=i.sha256)
            for i in ev.evaluations
        ],
        policy=ev.policy,
        policy_revision=ev.policy_revision,
        evidence_sha256=ev.sha256,
        signature=a.signature,
        key_id=a.key_id,
        current=a.current,
        create_time=ts(a.create_time),
    )


def card_to_proto(c: ModelCard) -> governance_pb2.ModelCard:
    return governance_pb2.ModelCard(
        name=c.name, format=c.format, media_type=c.media_type, content=c.content
    )


def event_to_proto(e: audit.AuditEvent) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        seq=e.seq,
        time=ts(e.time),
        actor=e.actor,
        action=e.action,
        resource=e.resource,
        request_id=e.request_id,
        before_sha256=e.before_sha256,
        after_sha256=e.after_sha256,
        prev_hash=e.prev_hash,
        hash=e.hash,
    )


def checkpoint_to_proto(c: audit.Checkpoint) -> audit_pb2.Checkpoint:
    return audit_pb2.Checkpoint(
        seq=c.seq,
        head_hash=c.head_hash,
        time=utc_text(c.time),
        key_id=c.key_id,
        signature=c.signature,
    )


def checkpoint_from_proto(c: audit_pb2.Checkpoint) -> audit.Checkpoint:
    return audit.Checkpoint.from_dict(
        {
            "seq": c.seq,
            "head_hash": c.head_hash,
            "time": c.time,
            "key_id": c.key_id,
            "signature": c.signature,
        }
    )


def verify_to_proto(r: audit.VerifyResult) -> audit_pb2.VerifyAuditResponse:
    signature = ""
    if r.signature_verified is not None:
        signature = "verified" if r.signature_verified else "invalid"
    return audit_pb2.VerifyAuditResponse(
        ok=r.ok,
        checked=r.checked,
        head_seq=r.head_seq,
        head_hash=r.head_hash,
        first_bad_seq=r.first_bad_seq or 0,
        problem=r.problem.value if r.problem else "",
        message=r.message,
        signature=signature,
    )
