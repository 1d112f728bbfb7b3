"""The evidence a gate decision or an approval rests on, and the signatures over approvals.

The evidence of a version for a target is the version's artifact digest, the latest evaluation
of the version (its name and report digest) and the revision of the policy bound to the target.
Its digest changes whenever any of them does: a new evaluation, a policy update. An approval
signs this evidence and stops counting once it changes.

A gate decision rests on more: everything the policy's rules can read (:class:`GateInputs`),
which adds the approvals standing on that evidence, the version's labels and its lineage, and
the version the target serves now, which ``delta`` is measured against (:class:`Comparison`). A
decision whose digest differs from :func:`gate_inputs` now no longer lets an alias move. Each
decision records the :data:`DIGEST_FORMAT` of its digest, so that one made by an earlier
release, whose digest covered other things, is told apart from one whose evidence changed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit import canonical_json, object_digest, public_key_for, shown_key_id
from controlplane.audit._canonical import utc_text
from controlplane.domain import ModelVersion
from controlplane.domain.governance import (
    Approval,
    Evaluation,
    Evidence,
    EvidenceItem,
    GateDecision,
    Policy,
)
from controlplane.services.evaluations import same_framing
from controlplane.store import Tx
from controlplane.store.convert import lineage_to_json
from controlplane.store.deployment_repos import Deployments
from controlplane.store.governance_repos import Governance, evidence_to_json
from modelplane.errors import InvalidArgument

DEPLOYMENT_TARGET = "deployments/"


def evidence_digest(version_name: str, target: str, evidence: Evidence) -> str:
    """SHA-256 of the canonical JSON of the evidence, bound to the version and target."""
    return object_digest({"version": version_name, "target": target, **evidence_to_json(evidence)})


def current_evidence(
    tx: Tx, version: ModelVersion, target: str
) -> tuple[Evidence, Evaluation | None, Policy | None]:
    """The evidence now, with the latest evaluation and the bound policy it names."""
    gov = Governance(tx.session)
    latest = gov.latest_evaluation(version.model_id, version.version)
    policy = gov.policy_for_target(target)
    evidence = Evidence(
        artifact_sha256=version.artifact.sha256,
        evaluations=[EvidenceItem(latest.name, latest.report_sha256)] if latest else [],
        policy=policy.name if policy else "",
        policy_revision=policy.revision if policy else 0,
    )
    digest = evidence_digest(version.name, target, evidence)
    return replace(evidence, sha256=digest), latest, policy


def approval_payload(a: Approval) -> bytes:
    """The bytes an approval's signature covers."""
    version = f"models/{a.model_id}/versions/{a.version}"
    return canonical_json(
        {
            "v": 1,
            "approval": a.name,
            "version": version,
            "target": a.target,
            "decision": a.decision,
            "comment": a.comment,
            "approver": a.approver,
            "roles": list(a.roles),
            "evidence": evidence_to_json(a.evidence),
            "evidence_sha256": a.evidence.sha256,
            "time": utc_text(a.create_time),
        }
    )


def sign(key: Ed25519PrivateKey, a: Approval) -> str:
    """Base64 Ed25519 signature of :func:`approval_payload`."""
    return base64.b64encode(key.sign(approval_payload(a))).decode("ascii")


def check_approval(key: Ed25519PrivateKey, key_id: str, a: Approval) -> tuple[bool, str]:
    """Whether the approval's evidence digest and signature hold, and why not.

    ``key`` is the server's key and ``key_id`` its id: an approval signed by it, or by a key
    it keeps as retired (:class:`controlplane.audit.SigningKeys`), is checked with that key; the
    message of one signed by a retired key says so ("signature valid (signed by retired key
    ...)")."""
    version = f"models/{a.model_id}/versions/{a.version}"
    if evidence_digest(version, a.target, a.evidence) != a.evidence.sha256:
        return False, "the evidence digest does not match the evidence it lists (record altered)"
    public, retired = (
        (key.public_key(), False) if a.key_id == key_id else public_key_for(key, a.key_id)
    )
    if public is None:
        return False, (
            f"signed by key {shown_key_id(a.key_id) if a.key_id else 'none'}, not this server's "
            f"key {key_id} nor one of its verification keys (a key it signed with before is kept "
            "valid by giving the server its public key with --verification-keys DIR)"
        )
    try:
        public.verify(base64.b64decode(a.signature), approval_payload(a))
    except (InvalidSignature, ValueError):
        return False, "the signature does not match the record (record altered)"
    return (
        True,
        f"signature valid (signed by retired key {a.key_id})" if retired else "signature valid",
    )


def latest_per_approver(approvals: list[Approval]) -> list[Approval]:
    """Each approver's latest decision, newest first: a later reject withdraws an earlier
    approve, and an approver who approved twice is one approval (names compared as
    :func:`modelplane.server.context.same_principal` does: ``Bob`` and ``bob`` are one)."""
    newest_first = sorted(approvals, key=lambda a: (a.create_time, a.id), reverse=True)
    seen: set[str] = set()
    out = []
    for a in newest_first:
        if a.approver.casefold() not in seen:
            seen.add(a.approver.casefold())
            out.append(a)
    return out


def standing_approvals(approvals: list[Approval], evidence: Evidence) -> list[Approval]:
    """Each approver's latest decision, when it was made on ``evidence``: an approver whose
    latest decision signed older evidence has none standing (their signatures not checked)."""
    return [a for a in latest_per_approver(approvals) if a.evidence.sha256 == evidence.sha256]


@dataclass(frozen=True)
class Comparison:
    """What a gate's ``delta`` is measured against: the version the target serves now.

    ``serving`` names that version (the alias's version, or the deployment's champion); it is
    empty when the target serves no version of this model, or serves this very version.
    ``compared_version`` is ``serving`` when ``deltas`` could be had for it, else empty (and
    ``deltas`` too), with ``missing`` saying why and what to run. ``evaluation`` names the
    stored evaluation of ``serving`` the deltas were computed from, or is empty when they are
    the deltas the version's own evaluation recorded against ``serving``.
    """

    serving: str = ""
    compared_version: str = ""
    deltas: dict[str, float | None] = field(default_factory=dict)
    evaluation: str = ""
    missing: str = ""

    @property
    def reference(self) -> dict[str, str]:
        """The part of a gate decision's evidence this comparison stands for."""
        return {
            "serving": self.serving,
            "compared_version": self.compared_version,
            "evaluation": self.evaluation,
        }


def serving_version(tx: Tx, model_id: str, target: str) -> int | None:
    """The version of ``model_id`` that ``target`` serves now: the version an alias points to,
    or the champion of ``deployments/{d}`` (None when it points nowhere, or serves another
    model)."""
    if target.startswith(DEPLOYMENT_TARGET):
        row = Deployments(tx.session).row(target.removeprefix(DEPLOYMENT_TARGET))
        return row.champion_version if row is not None and row.model_id == model_id else None
    alias = tx.aliases.get(model_id, target)
    return alias.version if alias is not None else None


def comparison_for(
    tx: Tx, version: ModelVersion, target: str, latest: Evaluation | None
) -> Comparison:
    """The deltas of ``latest`` (the version's latest evaluation) against the version
    ``target`` serves now: the evaluation's own deltas when it was compared with exactly that
    version, else computed from the newest stored evaluation of that version on the same
    dataset and label that frames the problem as ``latest`` does (same task and positive
    class); empty, with the reason, when neither exists."""
    served = serving_version(tx, version.model_id, target)
    if served is None:
        return Comparison(
            missing=f"{target} serves no version of this model yet (a rule can let a first "
            'release through: evaluation.serving == "" || delta.roc_auc >= -0.005)'
        )
    if served == version.version:
        return Comparison(missing=f"{target} already serves this version")
    serving = f"models/{version.model_id}/versions/{served}"
    if latest is None:
        return Comparison(serving, missing="the version has no evaluation")
    if latest.compared_version == serving:
        return Comparison(serving, serving, dict(latest.deltas))
    reframed: Evaluation | None = None
    for stored in Governance(tx.session).evaluations_newest(
        version.model_id, served, latest.dataset_sha256, latest.label
    ):
        if not same_framing(stored.report, latest.report):
            reframed = reframed or stored
            continue
        # The evaluation package loads the model runtime; only this path needs it.
        from controlplane.evaluation import compare

        try:
            deltas = compare(latest.report, stored.report)
        except InvalidArgument:
            continue
        return Comparison(serving, serving, deltas, stored.name)
    if target.startswith(DEPLOYMENT_TARGET):
        run = (
            f"evaluate version {served} on dataset {latest.dataset_sha256} (label "
            f"{latest.label!r}, {_framing(latest)}), or evaluate this version with "
            f"--compare-to an alias that points to version {served}"
        )
    else:
        run = f"evaluate this version with --compare-to {target}"
    if reframed is None:
        stored_text = f"no evaluation of {serving} on the same dataset exists"
    else:
        stored_text = (
            f"no evaluation of {serving} on the same dataset reads the problem as it does "
            f"({_framing(latest)}; the newest, {reframed.name}, has {_framing(reframed)})"
        )
    return Comparison(
        serving,
        missing=(
            f"its latest evaluation {latest.name} was compared with "
            f"{latest.compared_version or 'no version'}, not with {serving}, which {target} "
            f"serves, and {stored_text}; {run}"
        ),
    )


def _framing(e: Evaluation) -> str:
    """How ``e`` read the problem, as ``task ..., positive class ...`` (no positive class for
    a regression)."""
    task = e.report.get("task")
    positive = e.report.get("positive_class")
    return f"task {task}" + (f", positive class {positive!r}" if positive is not None else "")


@dataclass(frozen=True)
class GateInputs:
    """Everything the rules of a target's policy can read for one version, and its digest.

    ``sha256`` is what a gate decision records as ``evidence_sha256``: it covers the evidence
    (artifact, latest evaluation, policy revision), each standing approval as recorded
    (signature included, so the counted set cannot change without it changing), the version's
    labels and its lineage, and the :class:`Comparison` (the version the target serves and the
    evaluation the deltas come from). A change to any of them makes earlier gate decisions
    stale: moving the target's alias, or promoting another champion, included.
    """

    version: ModelVersion
    target: str
    evidence: Evidence
    latest: Evaluation | None
    policy: Policy | None
    approvals: list[Approval]
    sha256: str
    comparison: Comparison = field(default_factory=Comparison)

    def sha256_against(self, reference: dict[str, str]) -> str:
        """The digest of these inputs with ``delta`` measured against ``reference`` instead of
        what the target serves now."""
        return inputs_digest(self.version, self.target, self.evidence, self.approvals, reference)


def gate_inputs(tx: Tx, version: ModelVersion, target: str) -> GateInputs:
    """The inputs of a gate for ``version`` and ``target`` now, with their digest."""
    evidence, latest, policy = current_evidence(tx, version, target)
    everything = Governance(tx.session).approvals(version.model_id, version.version, target)
    standing = standing_approvals(everything, evidence)
    comparison = comparison_for(tx, version, target, latest)
    digest = inputs_digest(version, target, evidence, standing, comparison.reference)
    return GateInputs(version, target, evidence, latest, policy, standing, digest, comparison)


def decision_stands(tx: Tx, decision: GateDecision, inputs: GateInputs) -> bool:
    """Whether ``decision`` was made on ``inputs`` (the gate's inputs now, for its version and
    target).

    Once the target serves the decision's own version (the decision moved it there), what its
    ``delta`` was measured against cannot be found from the target any more: the reference
    the decision recorded stands in for it, and everything else must be as it was."""
    if decision.evidence_sha256 == inputs.sha256:
        return True
    return bool(
        decision.reference
        and serving_version(tx, inputs.version.model_id, inputs.target) == inputs.version.version
        and decision.evidence_sha256 == inputs.sha256_against(decision.reference)
    )


#: The shape of what :func:`inputs_digest` covers, recorded with each gate decision
#: (``reference["digest_format"]``) so that a decision made by a release whose digest covered
#: other things can be told from one whose evidence changed. Format 1 (releases before the
#: served version was covered) had no ``reference``; format 2 added it. A change to what the
#: digest covers must raise it.
DIGEST_FORMAT = 2


def decision_reference(comparison: Comparison) -> dict[str, str]:
    """What a gate decision records as its ``reference``: ``comparison``'s (see
    :attr:`Comparison.reference`) and the :data:`DIGEST_FORMAT` of its digest."""
    return comparison.reference | {"digest_format": str(DIGEST_FORMAT)}


def decision_format(decision: GateDecision) -> int:
    """The :data:`DIGEST_FORMAT` of ``decision``'s evidence digest: the one recorded with it;
    else 2 when it has a ``reference`` (recorded from revision 0012 on, before the format
    was); else 0, not known: it was recorded before revision 0012, by a release whose digest
    was of format 1, or of format 2 without the reference a re-set needs."""
    recorded = str(decision.reference.get("digest_format", ""))
    if recorded.isdigit():
        return int(recorded)
    return 2 if decision.reference else 0


def made_by_earlier_release(decision: GateDecision) -> bool:
    """Whether ``decision``'s evidence digest is of an earlier :data:`DIGEST_FORMAT` (or of
    one not known) than this release computes: when it differs from the inputs now, that
    says nothing of whether the evidence changed."""
    return decision_format(decision) < DIGEST_FORMAT


def inputs_digest(
    version: ModelVersion,
    target: str,
    evidence: Evidence,
    standing: list[Approval],
    reference: dict[str, str],
) -> str:
    """The digest :class:`GateInputs` records, of these parts."""
    return object_digest(
        {
            "v": DIGEST_FORMAT,
            "version": version.name,
            "target": target,
            **digest_parts(version, evidence, standing),
            "reference": {
                "serving": reference.get("serving", ""),
                "compared_version": reference.get("compared_version", ""),
                "evaluation": reference.get("evaluation", ""),
            },
        }
    )


def digest_parts(
    version: ModelVersion, evidence: Evidence, standing: list[Approval]
) -> dict[str, Any]:
    """The parts of :func:`inputs_digest` besides the version, the target and the reference
    (what ``delta`` is measured against): ``evidence`` (its digest), ``approvals`` (each
    standing approval as recorded, signature included), ``labels`` and ``lineage``."""
    return {
        "evidence": evidence.sha256,
        "approvals": [
            {
                "approval": a.name,
                "approver": a.approver,
                "roles": list(a.roles),
                "decision": a.decision,
                "comment": a.comment,
                "time": utc_text(a.create_time),
                "key_id": a.key_id,
                "signature": a.signature,
            }
            for a in standing
        ],
        "labels": dict(version.labels),
        "lineage": lineage_to_json(version.lineage),
    }


def approval_variables(approvals: list[Approval]) -> list[dict[str, Any]]:
    """The ``approvals`` policy variable: one entry per approver (their latest decision), with
    ``principal`` (``approver`` is the same value, kept for rules written against it),
    ``roles``, ``decision``, ``comment`` and ``time``."""
    return [
        {
            "principal": a.approver,
            "approver": a.approver,
            "roles": list(a.roles),
            "decision": a.decision,
            "comment": a.comment,
            "time": a.create_time,
        }
        for a in latest_per_approver(approvals)
    ]
