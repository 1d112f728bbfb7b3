"""Approvals: signed decisions by people on a version for a target, and their verification.

Roles come from the request context: from the caller's token or JWT when access control is on;
with access control off (loopback only), from the ``x-modelplane-roles`` metadata the caller
sends (see :mod:`controlplane.api.roles`), which proves nothing about the caller.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, select

from controlplane.audit import key_id as key_id_of
from controlplane.audit import object_digest, public_key_pem
from controlplane.domain import ModelVersion
from controlplane.domain.governance import Approval, SignatureCheck
from controlplane.names import check_text
from controlplane.services.evidence import (
    check_approval,
    current_evidence,
    sign,
    standing_approvals,
)
from controlplane.services.governance_names import check_target, new_id, parse_version_number
from controlplane.services.models import lock_model, require_model
from controlplane.services.versions import require_version
from controlplane.store import Store, Tx
from controlplane.store.governance_repos import ALL_DEPLOYMENTS, Governance, evidence_to_json
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.tables import ApprovalRow, PolicyRow
from modelplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from modelplane.server.context import RequestContext, same_principal

DECISIONS = ("approve", "reject")
#: The most governed targets a TARGET_NOT_GOVERNED message lists.
_LISTED_TARGETS = 20


def require_governed(tx: Tx, target: str) -> None:
    """FAILED_PRECONDITION (TARGET_NOT_GOVERNED) when no policy governs ``target`` (none is
    bound to it, nor, for a deployment, to ``deployments/*``): no gate would ever count an
    approval for it, so one recorded there is most likely a misspelt target. The message names
    the targets that are governed, the closest first."""
    if Governance(tx.session).policy_for_target(target) is not None:
        return
    q = select(PolicyRow.target).order_by(col(PolicyRow.target))
    governed = list(tx.session.exec(q).all())
    # An approval names one deployment, never deployments/* itself.
    close = difflib.get_close_matches(
        target, [t for t in governed if t != ALL_DEPLOYMENTS], n=3, cutoff=0.8
    )
    listed = close + [t for t in governed if t not in close]
    if not governed:
        known = "No target is governed yet"
    else:
        more = len(listed) - _LISTED_TARGETS
        known = "Governed targets: " + ", ".join(listed[:_LISTED_TARGETS])
        known += f" and {more} more" if more > 0 else ""
    hint = f" Did you mean {' or '.join(repr(t) for t in close)}?" if close else ""
    raise FailedPrecondition(
        f"no policy governs target {target!r}, so no gate would count an approval for it."
        f"{hint} {known}. Approve for a governed target, or create a policy for this one first "
        f"(modelplane policies create ID --target {target} --rule ...)",
        reason="TARGET_NOT_GOVERNED",
        metadata={"target": target, "suggestions": ",".join(close)},
    )


def _standing(tx: Tx, version: ModelVersion, approvals: Iterable[Approval]) -> set[str]:
    """The ids among ``approvals`` that are current: standing as a gate counts them (each
    approver's latest decision for its target, made on the evidence as it is now), which takes
    all of a target's approvals to say."""
    gov = Governance(tx.session)
    standing: set[str] = set()
    for target in {a.target for a in approvals}:
        evidence = current_evidence(tx, version, target)[0]
        mine = gov.approvals(version.model_id, version.version, target)
        standing |= {a.id for a in standing_approvals(mine, evidence)}
    return standing


class ApprovalService:
    """Records signed approvals, lists them, and verifies a version's signed records."""

    def __init__(self, store: Store, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key
        self.key_id = key_id_of(key)

    def public_key(self) -> tuple[str, str]:
        """The PEM public key and its id."""
        return public_key_pem(self.key), self.key_id

    def approve(
        self,
        ctx: RequestContext,
        name: str,
        target: str,
        decision: str = "approve",
        comment: str = "",
        request_id: str = "",
    ) -> Approval:
        """Record ``decision`` on version ``name`` for ``target`` (an alias name or
        ``deployments/{d}``), signed over the current evidence. FAILED_PRECONDITION
        (TARGET_NOT_GOVERNED) when no policy governs the target (see
        :func:`require_governed`), PERMISSION_DENIED (SELF_APPROVAL) for the version's author."""
        model_id, number, _ = parse_version_number(name)
        assert number is not None
        check_target(target)
        decision = decision or "approve"
        if decision not in DECISIONS:
            raise InvalidArgument(
                f"decision must be 'approve' or 'reject', not {decision[:40]!r}",
                reason="INVALID_DECISION",
            )
        check_text(comment, "comment", 4000)
        request = {"name": name, "target": target, "decision": decision, "comment": comment}
        with self.store.write(ctx, "Approve", request_id, request=request) as tx:
            gov = Governance(tx.session)
            if tx.replay is not None:
                for a in gov.approvals(model_id, number, target):
                    if a.name == tx.replay:
                        # Current as a listing marks it now, as the first answer marked it then.
                        version = require_version(tx, model_id, number)
                        return replace(a, current=a.id in _standing(tx, version, [a]))
                raise NotFound(
                    f"approval {tx.replay} recorded for request_id {request_id} no longer exists",
                    reason="APPROVAL_NOT_FOUND",
                )
            # The model's lock, as a forced DeleteModel takes it: an approval committed after
            # the delete would count for a version 1 registered again with the same artifact.
            lock_model(tx, model_id)
            version = require_version(tx, model_id, number)
            if same_principal(version.created_by, ctx.principal):
                # The creator as recorded: "Alice" may be refused for what "alice" created.
                creator = (
                    f"{ctx.principal} created {version.name}"
                    if ctx.principal == version.created_by
                    else f"{ctx.principal} is {version.created_by}, who created {version.name} "
                    "(names compare without case),"
                )
                raise PermissionDenied(
                    f"{creator} and cannot approve it (separation of duties); ask someone else",
                    reason="SELF_APPROVAL",
                )
            require_governed(tx, target)
            evidence, _, _ = current_evidence(tx, version, target)
            unsigned = Approval(
                model_id=model_id,
                version=number,
                id=new_id("ap"),
                target=target,
                decision=decision,
                comment=comment,
                approver=ctx.principal,
                roles=sorted(set(ctx.roles)),
                evidence=evidence,
                signature="",
                key_id=self.key_id,
                create_time=tx.now,
            )
            signed = replace(unsigned, signature=sign(self.key, unsigned))
            stored = gov.add_approval(
                ApprovalRow(
                    id=signed.id,
                    model_id=model_id,
                    version=number,
                    target=target,
                    decision=decision,
                    comment=comment,
                    approver=signed.approver,
                    roles=signed.roles,
                    evidence=evidence_to_json(evidence),
                    evidence_sha256=evidence.sha256,
                    signature=signed.signature,
                    key_id=self.key_id,
                    create_time=tx.now,
                )
            )
            stored = replace(stored, current=True)
            tx.record("Approve", stored.name, None, stored)
            return stored

    def list_approvals(
        self, parent: str, page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[Approval], str]:
        """A version's approvals, newest first, each marked current or not."""
        model_id, number, _ = parse_version_number(parent)
        assert number is not None
        query = {"list": "approvals", "parent": parent}
        after = decode(page_token, query)
        limit = page_size(page_size_)
        with self.store.read() as tx:
            require_model(tx, model_id)
            version = require_version(tx, model_id, number)
            gov = Governance(tx.session)
            # Pages resume after the last row's (create time, id), not at a position: an
            # approval recorded between two pages neither repeats nor hides a row.
            page, next_key = gov.approvals_page(model_id, number, after, limit)
            standing = _standing(tx, version, page)
            marked = [replace(a, current=a.id in standing) for a in page]
        return marked, encode(query, next_key) if next_key else ""

    def verify_version(self, name: str) -> list[SignatureCheck]:
        """Check every approval's signature and evidence digest, and every evaluation's report
        digest, of a version."""
        model_id, number, _ = parse_version_number(name)
        assert number is not None
        checks: list[SignatureCheck] = []
        with self.store.read() as tx:
            require_model(tx, model_id)
            version = require_version(tx, model_id, number)
            gov = Governance(tx.session)
            evaluations, _ = gov.evaluations_page(model_id, number, None, 10_000)
            stored = {e.name: e for e in evaluations}
            for e in evaluations:
                ok = object_digest(e.report) == e.report_sha256
                message = "report digest valid" if ok else "the report does not match its digest"
                checks.append(SignatureCheck(e.name, ok, message))
            for a in gov.approvals(model_id, number):
                ok, message = check_approval(self.key, self.key_id, a)
                if ok and a.evidence.artifact_sha256 != version.artifact.sha256:
                    ok, message = False, "the approval names another artifact than the version's"
                for item in a.evidence.evaluations if ok else []:
                    signed = stored.get(item.resource)
                    if signed is not None and signed.report_sha256 != item.sha256:
                        ok, message = False, f"{item.resource} changed since it was approved"
                checks.append(SignatureCheck(a.name, ok, message))
        return checks
