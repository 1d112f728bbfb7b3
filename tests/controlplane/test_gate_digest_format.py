"""Gate decisions made by an earlier release, through a real control plane on a real SQLite
file: a decision whose evidence digest is of an older format (the served version not covered,
no reference, no format recorded) is altered into the database as such a release stored it.
Moving the alias is refused with a message that says so, not that the evidence changed, and
gating again without a new approval lets the alias move."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import col, update

from controlplane.audit import object_digest
from controlplane.audit._canonical import utc_text
from controlplane.services.evidence import GateInputs, gate_inputs
from controlplane.store import Store
from controlplane.store.convert import lineage_to_json
from controlplane.store.tables import GateDecisionRow
from modelplane.errors import FailedPrecondition
from modelplane.server.context import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_delta import add, candidate, evaluate
from tests.controlplane.test_governance_gates import RISK_RULE

EARLIER = "was made by an earlier release, whose evidence digest this release does not compare"


def _format_1_digest(inputs: GateInputs) -> str:
    """The evidence digest a release before the served version was covered recorded (format
    1): no ``reference``."""
    return object_digest(
        {
            "v": 1,
            "version": inputs.version.name,
            "target": inputs.target,
            "evidence": inputs.evidence.sha256,
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
                for a in inputs.approvals
            ],
            "labels": dict(inputs.version.labels),
            "lineage": lineage_to_json(inputs.version.lineage),
        }
    )


def _stored_reference(cp: RunningControlPlane, decision: str) -> dict[str, str]:
    """The ``reference`` of the gate decision named ``decision``, as the database holds it."""
    store = Store.open(cp.db_url)
    try:
        with store.read() as tx:
            row = tx.session.get(GateDecisionRow, decision.rpartition("/")[2])
            assert row is not None
            return dict(row.reference)
    finally:
        store.close()


def _as_an_earlier_release_stored_it(cp: RunningControlPlane, decision: str, *, v1: bool) -> None:
    """Alter the gate decision named ``decision`` into what an earlier release stored: no
    reference (migration 0012 left it empty) and no digest format; with ``v1``, the digest of
    format 1 too, computed on the inputs now (nothing else changed)."""
    store = Store.open(cp.db_url)
    try:
        with store.write(RequestContext(principal="test"), "test") as tx:
            row = tx.session.get(GateDecisionRow, decision.rpartition("/")[2])
            assert row is not None
            values: dict[str, Any] = {"reference": {}}
            if v1:
                got = tx.versions.get(row.model_id, row.version)
                assert got is not None
                values["evidence_sha256"] = _format_1_digest(gate_inputs(tx, got, row.target))
            statement = update(GateDecisionRow).where(col(GateDecisionRow.id) == row.id)
            tx.session.exec(statement.values(**values))  # type: ignore[call-overload]
    finally:
        store.close()


def _approved_candidate(cp: RunningControlPlane, trained: TrainedModel) -> tuple[str, str, int]:
    """A new model whose v1 a new alias serves and whose v2, evaluated against it, bob approved
    under a policy on the alias that asks for a risk approval: (model id, alias, v2)."""
    model_id, target = unique(), unique("prod")
    with cp.client("alice") as alice:
        _, v2 = candidate(alice, trained, model_id, target, RISK_RULE)
    with cp.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, v2, target, comment="ok")
    return model_id, target, v2


def test_a_pending_decision_of_an_earlier_release_says_so_and_gating_again_passes(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, target, v2 = _approved_candidate(controlplane, trained_model)
    with controlplane.client("alice") as alice:
        gated = alice.evaluate_gate(model_id, v2, target)
        assert gated.passed
        _as_an_earlier_release_stored_it(controlplane, gated.name, v1=True)
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, target, v2, reason="release after upgrade")
        assert refused.value.reason == "GATE_FAILED"
        message = refused.value.message
        assert f"gate decision {gated.name} {EARLIER}" in message
        assert (
            f"run `modelplane gate {model_id} {v2} --target {target}` again (approvals still "
            "count)" in message
        )
        assert "evidence changed" not in message and "approval was given" not in message
        # The model card says the same of it.
        card = json.loads(alice.model_card(model_id, v2, format="json").content)
        ((name, current, earlier),) = [
            (d["name"], d["current"], d["made_by_earlier_release"]) for d in card["gate_decisions"]
        ]
        assert (name, current, earlier) == (gated.name, False, True)
        markdown = alice.model_card(model_id, v2).content
        assert "no: made by an earlier release, run the gate again" in markdown
        assert "the evidence changed since" not in markdown
        # Gated again, without a new approval: bob's still counts, and the alias moves.
        again = alice.evaluate_gate(model_id, v2, target)
        assert again.passed and [r.outcome for r in again.results] == ["passed"]
        # This release records the format of its digest with the decision.
        assert _stored_reference(controlplane, again.name)["digest_format"] == "2"
        moved = alice.set_alias(model_id, target, v2, reason="release after upgrade")
        assert moved.version == f"models/{model_id}/versions/{v2}"


def test_a_new_evaluation_is_named_whoever_made_the_decision(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        alice.create_model(model_id)
        v1 = add(alice, trained_model, model_id, trained_model.onnx)
        alice.create_policy(unique("p"), target=target, rules=["true"])
        evaluate(alice, trained_model, model_id, v1)
        gated = alice.evaluate_gate(model_id, v1, target)
        _as_an_earlier_release_stored_it(controlplane, gated.name, v1=True)
        evaluate(alice, trained_model, model_id, v1)
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, target, v1)
        assert "the evidence changed since" in refused.value.message
        assert "(a new evaluation " in refused.value.message
        assert EARLIER not in refused.value.message


def test_a_decision_of_this_format_whose_labels_changed_still_says_the_evidence_changed(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """A decision recorded with a reference but no format (releases from revision 0012 until
    the format was recorded) is compared as this release's own."""
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        alice.create_model(model_id)
        v1 = add(alice, trained_model, model_id, trained_model.onnx)
        alice.create_policy(unique("p"), target=target, rules=["true"])
        gated = alice.evaluate_gate(model_id, v1, target)
        store = Store.open(controlplane.db_url)
        try:
            with store.write(RequestContext(principal="test"), "test") as tx:
                row = tx.session.get(GateDecisionRow, gated.name.rpartition("/")[2])
                assert row is not None
                row.reference = {k: v for k, v in row.reference.items() if k != "digest_format"}
                tx.session.add(row)
        finally:
            store.close()
        # Unchanged, it still stands.
        alice.set_alias(model_id, target, v1)
        alice.update_version(model_id, v1, labels={"team": "risk"})
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, target, v1)
        assert "the evidence changed since" in refused.value.message
        assert EARLIER not in refused.value.message


def test_setting_an_alias_again_to_its_version_with_a_decision_without_reference(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """A decision recorded before revision 0012 has no reference, so once the alias serves its
    version, what its delta was measured against cannot be found: a re-set says the decision
    was made by an earlier release, and gating again lets it through."""
    model_id, target, v2 = _approved_candidate(controlplane, trained_model)
    with controlplane.client("alice") as alice:
        gated = alice.evaluate_gate(model_id, v2, target)
        assert gated.passed
        alice.set_alias(model_id, target, v2)
        _as_an_earlier_release_stored_it(controlplane, gated.name, v1=False)
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, target, v2, reason="retry")
        assert refused.value.reason == "GATE_FAILED"
        assert f"gate decision {gated.name} {EARLIER}" in refused.value.message
        assert "again (approvals still count)" in refused.value.message
        again = alice.evaluate_gate(model_id, v2, target)
        assert again.passed
        assert alice.set_alias(model_id, target, v2, reason="retry").reason == "retry"
