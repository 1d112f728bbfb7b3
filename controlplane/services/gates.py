"""Gates: evaluate the policy bound to a target for a version, record the decision, and refuse
to move a governed alias without a passing, current decision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit import key_id as key_id_of
from controlplane.audit import object_digest
from controlplane.domain import ModelVersion
from controlplane.domain.governance import Approval, Evaluation, Evidence, GateDecision
from controlplane.policy import POLICY_VARIABLES, Reference, compile_rules, evaluate_rules
from controlplane.services.evidence import (
    DEPLOYMENT_TARGET,
    Comparison,
    GateInputs,
    approval_variables,
    check_approval,
    decision_reference,
    decision_stands,
    digest_parts,
    gate_inputs,
    made_by_earlier_release,
    serving_version,
    standing_approvals,
)
from controlplane.services.governance_names import check_target, new_id, parse_version_number
from controlplane.services.models import lock_model, require_model
from controlplane.services.versions import require_version
from controlplane.store import Store, Tx
from controlplane.store.convert import lineage_to_json
from controlplane.store.governance_repos import Governance
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.tables import GateDecisionRow
from modelplane.errors import FailedPrecondition, InvalidArgument, ModelplaneError, NotFound
from modelplane.server.context import RequestContext


def valid_approvals(
    tx: Tx, key: Ed25519PrivateKey, version: ModelVersion, target: str, evidence: Evidence
) -> list[Approval]:
    """The approvals that count for ``version`` and ``target``: each approver's latest decision
    (a later reject withdraws an earlier approve; repeated approvals count once), when it signed
    the current evidence and its signature by this server's key is valid."""
    everything = Governance(tx.session).approvals(version.model_id, version.version, target)
    return counted_approvals(key, standing_approvals(everything, evidence))


def counted_approvals(key: Ed25519PrivateKey, standing: list[Approval]) -> list[Approval]:
    """Those of the ``standing`` approvals whose signature by this server's key is valid."""
    return _sorted_approvals(key, standing)[0]


def _sorted_approvals(
    key: Ed25519PrivateKey, standing: list[Approval]
) -> tuple[list[Approval], list[tuple[Approval, str]]]:
    """The ``standing`` approvals whose signature by this server's key (or one it verifies
    with) is valid, and those left out, each with why (as :func:`check_approval` says it)."""
    kid = key_id_of(key)
    counted: list[Approval] = []
    left_out: list[tuple[Approval, str]] = []
    for a in standing:
        ok, why = check_approval(key, kid, a)
        if ok:
            counted.append(a)
        else:
            left_out.append((a, why))
    return counted, left_out


#: The ``reference`` key under which a gate decision records the approvals it counted (their
#: names, comma-separated): those whose signature verified when it was made.
COUNTED_APPROVALS = "counted_approvals"


def _names(approvals: Sequence[Approval]) -> str:
    return ",".join(sorted(a.name for a in approvals))


def _lost_approvals(
    key: Ed25519PrivateKey | None, decision: GateDecision, inputs: GateInputs
) -> list[tuple[Approval, str]]:
    """The approvals ``decision`` counted that no longer verify (the server's signing key
    changed, without the old one given as a verification key), each with why. None for a
    decision recorded before it kept what it counted, or without a key to check with."""
    recorded = decision.reference.get(COUNTED_APPROVALS)
    if key is None or recorded is None:
        return []
    counted = set(recorded.split(",")) - {""}
    _, left_out = _sorted_approvals(key, inputs.approvals)
    return [(a, why) for a, why in left_out if a.name in counted]


def _not_counted(a: Approval, why: str) -> str:
    """Why the standing approval ``a`` does not count, for a rule's message."""
    roles = f"roles {', '.join(a.roles)}" if a.roles else "no roles"
    return f"approval {a.name} by {a.approver} ({a.decision}, {roles}) not counted: {why}"


#: The part of :class:`controlplane.services.evidence.GateInputs` (and so of a gate decision's
#: evidence digest) each policy variable is read from. A variable added to the policy language
#: must be added here, and to the digest, or every gate fails the assertion below.
DIGEST_COVERS = {
    "metrics": "evidence (latest evaluation)",
    "delta": "evidence (latest evaluation) and comparison (what the target serves)",
    "fairness": "evidence (latest evaluation)",
    "validation": "evidence (latest evaluation)",
    "evaluation": "evidence (latest evaluation) and comparison (serving, compared_version)",
    "approvals": "approvals",
    "labels": "labels",
    "lineage": "lineage",
}


def gate_variables(
    version: ModelVersion,
    latest: Evaluation | None,
    approvals: list[Approval],
    comparison: Comparison | None = None,
) -> dict[str, Any]:
    """The variables of :data:`controlplane.policy.POLICY_VARIABLES` for one version.

    ``metrics``, ``fairness`` and ``validation`` come from the latest evaluation's report
    (empty without one). ``delta`` holds the deltas of ``comparison`` (against the version the
    gate's target serves now, see :func:`controlplane.services.evidence.comparison_for`), never
    those the latest evaluation recorded against an alias of its caller's choosing; without a
    comparison it is empty.

    An undefined value (null in the stored report: a ``roc_auc`` of single-class labels, a
    delta where either side is undefined, a fairness rate of a group without positive rows, a
    validation share without a baseline) is left out of these maps, as the API's ``metrics``
    and ``deltas`` maps leave it out, so ``has(metrics.roc_auc)`` is false for it and
    ``!has(metrics.roc_auc) || metrics.roc_auc >= 0.9`` passes; a rule that reads it unguarded
    errs (no such key), so the gate fails, and the message says the value is undefined.

    ``evaluation.serving`` names the version the target serves now (``""`` when it serves no
    version of this model yet, or this very version), whether or not ``delta`` could be
    measured against it, and whether or not the version has an evaluation: it is what tells a
    first release (``evaluation.serving == ""``) from a release whose ``delta`` is missing, so
    ``evaluation.serving == "" || delta.roc_auc >= -0.005`` lets only a first release through
    without a delta (``!has(delta.roc_auc)`` is also true when the candidate was evaluated on a
    dataset the served version never was, or when either side's roc_auc is undefined). The
    other fields of ``evaluation`` come from the latest evaluation and are absent without
    one."""
    comparison = comparison or Comparison()
    report = latest.report if latest else {}
    evaluation: dict[str, Any] = {"serving": comparison.serving}
    if latest is not None:
        evaluation |= {
            "name": latest.name,
            "dataset_sha256": latest.dataset_sha256,
            "dataset_role": latest.dataset_role,
            "time": latest.create_time,
            "compared_version": comparison.compared_version,
        }
    variables = {
        "metrics": _defined(report.get("metrics") or {}),
        "delta": _defined(comparison.deltas),
        "fairness": _defined(report.get("fairness") or {}),
        "validation": _defined(report.get("validation") or {}),
        "evaluation": evaluation,
        "approvals": approval_variables(approvals),
        "labels": dict(version.labels),
        "lineage": lineage_to_json(version.lineage),
    }
    assert set(variables) == set(POLICY_VARIABLES) == set(DIGEST_COVERS)
    return variables


def _is_undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _defined(
    values: Mapping[str, Any],
    path: tuple[str, ...] = (),
    dropped: list[tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """``values`` without its undefined entries (None or NaN), in the maps nested in it too;
    the path of each entry left out is added to ``dropped``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = (*path, str(key))
        if _is_undefined(value):
            if dropped is not None:
                dropped.append(where)
        elif isinstance(value, Mapping):
            out[key] = _defined(value, where, dropped)
        else:
            out[key] = value
    return out


def _undefined_values(latest: Evaluation | None, comparison: Comparison) -> dict[str, str]:
    """Why each value :func:`gate_variables` leaves out as undefined is absent, keyed by its
    path as a rule's result names it (``metrics.roc_auc``, ``fairness.sex.groups.f.tpr``)."""
    why: dict[str, str] = {}
    if latest is not None:
        for variable in ("metrics", "fairness", "validation"):
            dropped: list[tuple[str, ...]] = []
            _defined(latest.report.get(variable) or {}, (variable,), dropped)
            for path in dropped:
                text = Reference(path, 1, 1).text
                why[text] = (
                    f"{text} is undefined in {latest.name} (null in its report; its warnings "
                    "say why)"
                )
    dropped = []
    _defined(comparison.deltas, ("delta",), dropped)
    for path in dropped:
        text = Reference(path, 1, 1).text
        why[text] = (
            f"{text} is undefined: {path[-1]} is undefined in this version's evaluation or in "
            f"that of {comparison.compared_version}"
        )
    return why


def require_gate_passed(tx: Tx, model_id: str, version: int, alias: str) -> None:
    """FAILED_PRECONDITION (GATE_FAILED) unless ``alias`` (an alias name or
    ``deployments/{d}``) is ungoverned or the latest gate decision of the version for it passed
    on the current evidence.

    A deployment without a policy of its own is governed by the policy bound to
    ``deployments/*``, when there is one: its decisions are still the deployment's own."""
    gov = Governance(tx.session)
    policy = gov.policy_for_target(alias)
    if policy is None:
        return
    got = tx.versions.get(model_id, version)
    if got is None:
        return
    decision = gov.latest_decision(model_id, version, alias)
    hint = f"run `modelplane gate {model_id} {version} --target {alias}`"
    if decision is None:
        problem = f"no gate decision exists for {got.name} and target {alias!r}"
    elif not decision.passed:
        problem = f"the latest gate decision {decision.name} failed"
    else:
        # Only a passed decision needs the current evidence (evaluations, approvals and their
        # signatures) gathered, to see that it still stands.
        inputs = gate_inputs(tx, got, alias)
        if decision_stands(tx, decision, inputs):
            lost = _lost_approvals(tx.approval_key, decision, inputs)
            if not lost:
                return
            problem = (
                f"gate decision {decision.name} counted approvals that no longer count: "
                + "; ".join(_not_counted(a, why) for a, why in lost)
            )
        else:
            serves_it = serving_version(tx, model_id, alias) == version
            problem, hint = _stale(decision, inputs, hint, serves_it)
        policy = inputs.policy or policy
    kind = "deployment" if alias.startswith(DEPLOYMENT_TARGET) else "alias"
    through = f" (bound to {policy.target})" if policy.target != alias else ""
    raise FailedPrecondition(
        f"{kind} {alias!r} is governed by {policy.name}{through}: {problem}; {hint}",
        reason="GATE_FAILED",
        metadata={"target": alias, "version": got.name},
    )


def not_comparable(decision: GateDecision, inputs: GateInputs) -> bool:
    """Whether ``decision``, which does not stand on ``inputs``, was made by an earlier release
    whose evidence digest this one cannot compare (it covered other things, or, made before
    revision 0012, lacks the reference a re-set to the served version needs), and neither of
    the changes a decision names plainly (a new evaluation, a policy revision) happened: so
    nothing says the evidence changed, and gating again is all it takes."""
    return _what_changed(decision, inputs) is None and made_by_earlier_release(decision)


def _stale(
    decision: GateDecision, inputs: GateInputs, hint: str, serves_it: bool = False
) -> tuple[str, str]:
    """Why the passed ``decision`` no longer stands on ``inputs``, and what to run (``hint``):
    a new evaluation or policy revision whoever made it, else an earlier release's decision
    (:func:`not_comparable`), else which other parts of its digest changed. ``serves_it``:
    the target serves the decision's version now, so the reference the decision recorded
    stands in for what it serves (see :func:`decision_stands`)."""
    if not_comparable(decision, inputs):
        return (
            f"gate decision {decision.name} was made by an earlier release, whose evidence "
            "digest this release does not compare",
            f"{hint} again (approvals still count)",
        )
    changed = _what_changed(decision, inputs) or _what_else_changed(decision, inputs, serves_it)
    return (
        f"the evidence changed since gate decision {decision.name} ({changed})",
        hint,
    )


def _what_changed(decision: GateDecision, inputs: GateInputs) -> str | None:
    """The change to the evidence (the evaluation or the policy's revision) that ``decision``
    records plainly, whichever release made it; None when neither changed."""
    latest = inputs.latest.name if inputs.latest else ""
    if decision.evaluation != latest:
        return f"a new evaluation {latest or '(none)'}"
    revision = inputs.policy.revision if inputs.policy else 0
    if decision.policy_revision != revision:
        return f"{decision.policy or 'the policy'} is at revision {revision} now"
    return None


#: What a change to each part of a decision's evidence digest (:func:`digest_parts`) is, in a
#: message; the decision records each part's digest in its ``reference``
#: (:func:`part_digests`).
_PART_CHANGES = {
    "evidence": "the evidence approvals sign changed (the artifact, the evaluation's report or "
    "the policy)",
    "approvals": "an approval was given, withdrawn or altered",
    "labels": "the version's labels changed",
    "lineage": "the version's lineage changed",
}


def part_digests(inputs: GateInputs) -> dict[str, str]:
    """The digest of each part of ``inputs``' digest (:func:`digest_parts`), as a gate decision
    records them in its ``reference`` (``approvals_sha256``, ...), so that a stale decision can
    say which part changed."""
    parts = digest_parts(inputs.version, inputs.evidence, inputs.approvals)
    return {f"{name}_sha256": object_digest(value) for name, value in parts.items()}


def _what_else_changed(decision: GateDecision, inputs: GateInputs, serves_it: bool) -> str:
    """Which parts of ``decision``'s digest changed, when neither the evaluation nor the
    policy did: what the target serves (the decision's ``reference``), and, when the decision
    recorded their digests, each of the others; for a decision recorded without them, those
    others together."""
    served = None if serves_it else _served_change(decision, inputs)
    recorded = decision.reference
    now = part_digests(inputs)
    if all(key in recorded for key in now):
        changes = [
            _PART_CHANGES[key.removesuffix("_sha256")]
            for key, digest in now.items()
            if recorded[key] != digest
        ]
    elif served is not None and inputs.sha256_against(recorded) == decision.evidence_sha256:
        changes = []  # only what the target serves
    else:
        changes = [
            "an approval was given, withdrawn or altered, or the version's labels or lineage "
            "changed"
        ]
    if served is not None:
        changes.append(served)
    if not changes:
        # Nothing the decision recorded differs, yet its digest does.
        changes = ["what its rules read differs from what the decision recorded"]
    return "; ".join(changes)


def _served_change(decision: GateDecision, inputs: GateInputs) -> str | None:
    """How what ``delta`` is measured against changed since ``decision`` (what the target
    serves, or the evaluation of it the deltas come from); None when it did not."""
    before, now = decision.reference, inputs.comparison
    target = inputs.target
    if before.get("serving", "") != now.serving:
        none = "no version of this model"
        delta = (
            f"delta is against {now.compared_version} now"
            if now.compared_version
            else "delta is empty now"
        )
        return (
            f"what {target} serves moved from {before.get('serving', '') or none} to "
            f"{now.serving or none}; {delta}"
        )
    if before.get("compared_version", "") != now.compared_version:
        if now.compared_version:
            return f"delta can be measured against {now.compared_version} now"
        return f"delta can no longer be measured against {now.serving}: {now.missing}"
    if before.get("evaluation", "") != now.evaluation:
        source = now.evaluation or "this version's evaluation (its own deltas)"
        return f"delta against {now.serving} comes from {source} now"
    return None


def _variable(path: str) -> str:
    """The variable a path a rule reads starts with (``delta`` of ``delta.roc_auc``)."""
    return path.split(".")[0].split("[")[0]


def _explained(
    results: list[dict[str, Any]],
    comparison: Comparison,
    undefined: Mapping[str, str],
    left_out: Sequence[tuple[Approval, str]] = (),
) -> list[dict[str, Any]]:
    """``results``, with why a value is absent added to each rule that did not pass and read
    it: ``undefined`` values (see :func:`_undefined_values`), ``delta`` when it is empty, and,
    for a rule that reads ``approvals``, each standing approval ``left_out`` of it (its
    signature does not verify) with why."""
    for r in results:
        if r["outcome"] == "passed":
            continue
        reasons = list(dict.fromkeys(undefined[m] for m in r["missing"] if m in undefined))
        reads_delta = any(_variable(m) == "delta" for m in r["missing"])
        if reads_delta and not comparison.compared_version:
            reasons.append(f"delta is empty: {comparison.missing}")
        if any(_variable(p) == "approvals" for p in [*r["values"], *r["missing"]]):
            reasons.extend(_not_counted(a, why) for a, why in left_out)
        if reasons:
            r["message"] = "; ".join([r["message"], *reasons])
    return results


class GateService:
    """Evaluates gates and lists their decisions."""

    def __init__(self, store: Store, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key

    def evaluate_gate(
        self, ctx: RequestContext, name: str, target: str, request_id: str = ""
    ) -> GateDecision:
        model_id, number, _ = parse_version_number(name)
        assert number is not None
        check_target(target)
        # The rules run before the write transaction, so that other writes need not wait on
        # them; the transaction records their results when the inputs are still those they
        # read (the same evidence digest), and runs them again otherwise.
        ready = self._evaluated_ahead(model_id, number, target)
        request = {"name": name, "target": target}
        with self.store.write(ctx, "EvaluateGate", request_id, request=request) as tx:
            gov = Governance(tx.session)
            if tx.replay is not None:
                replayed = gov.get_decision(model_id, number, tx.replay.rpartition("/")[2])
                if replayed is None:
                    raise NotFound(
                        f"gate decision {tx.replay} recorded for request_id {request_id} no "
                        "longer exists",
                        reason="GATE_DECISION_NOT_FOUND",
                    )
                return replayed
            # The model's lock, as a forced DeleteModel takes it: a decision committed after
            # the delete would be listed for a version 1 registered again.
            lock_model(tx, model_id)
            version = require_version(tx, model_id, number)
            inputs = gate_inputs(tx, version, target)
            latest, policy = inputs.latest, inputs.policy
            if ready is not None and ready[0] == inputs.sha256:
                results, passed = ready[1], ready[2]
            else:
                results, passed = self._evaluate(version, inputs)
            made = gov.add_decision(
                GateDecisionRow(
                    id=new_id("gd"),
                    model_id=model_id,
                    version=number,
                    target=target,
                    policy=policy.name if policy else "",
                    policy_revision=policy.revision if policy else 0,
                    evaluation=latest.name if latest else "",
                    passed=passed,
                    results=results,
                    evidence_sha256=inputs.sha256,
                    created_by=ctx.principal,
                    create_time=tx.now,
                    reference=decision_reference(inputs.comparison)
                    | part_digests(inputs)
                    | {COUNTED_APPROVALS: _names(counted_approvals(self.key, inputs.approvals))},
                )
            )
            tx.record("EvaluateGate", made.name, None, made)
            return made

    def _evaluated_ahead(
        self, model_id: str, number: int, target: str
    ) -> tuple[str, list[dict[str, Any]], bool] | None:
        """The gate's rules evaluated in a read transaction: the inputs' digest, the results
        and whether they passed. None when that fails: the write transaction meets the same
        problem and answers it (a replay first)."""
        try:
            with self.store.read() as tx:
                version = require_version(tx, model_id, number)
                inputs = gate_inputs(tx, version, target)
        except ModelplaneError:
            return None
        try:
            return (inputs.sha256, *self._evaluate(version, inputs))
        except ModelplaneError:
            return None

    def _evaluate(
        self, version: ModelVersion, inputs: GateInputs
    ) -> tuple[list[dict[str, Any]], bool]:
        """The results of the policy's rules on ``inputs``, and whether they all passed (no
        policy: none, passed)."""
        policy = inputs.policy
        if policy is None:
            return [], True
        approvals, left_out = _sorted_approvals(self.key, inputs.approvals)
        try:
            rules = compile_rules(policy.rules, variables=POLICY_VARIABLES)
        except InvalidArgument as exc:
            # Stored before a rule limit it now breaks: the policy, not this call, needs
            # changing.
            raise FailedPrecondition(
                f"{policy.name} (revision {policy.revision}) has a rule this server no longer "
                f"accepts: {exc.message}; update the policy",
                reason="POLICY_RULE_REFUSED",
                metadata={"policy": policy.name},
            ) from exc
        variables = gate_variables(version, inputs.latest, approvals, inputs.comparison)
        decision = evaluate_rules(rules, variables)
        undefined = _undefined_values(inputs.latest, inputs.comparison)
        results = _explained(decision.to_dict()["results"], inputs.comparison, undefined, left_out)
        return results, decision.allowed

    def list_decisions(
        self, parent: str, target: str = "", page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[GateDecision], str]:
        model_id, number, _ = parse_version_number(parent)
        assert number is not None
        if target:
            check_target(target)
        query = {"list": "gateDecisions", "parent": parent, "target": target}
        after = decode(page_token, query)
        with self.store.read() as tx:
            require_model(tx, model_id)
            require_version(tx, model_id, number)
            items, next_key = Governance(tx.session).decisions_page(
                model_id, number, target, after, page_size(page_size_)
            )
        return items, encode(query, next_key) if next_key else ""
