"""The model card's gate decisions: each target's newest one, however many decisions other
targets have."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import col, select

from controlplane.store import Store
from controlplane.store.tables import GateDecisionRow
from modelplane.server.context import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_evaluation import register

#: Decisions recorded for one target after the other's (the card once read only the newest
#: thousand of a version, across its targets).
MANY = 1000


def _repeat_newest(db_url: str, model_id: str, version: int, target: str, times: int) -> str:
    """Record ``times`` copies of the version's newest decision for ``target``, each a second
    newer than the one before (as that many gates would); the id of the newest."""
    store = Store.open(db_url)
    try:
        with store.write(RequestContext(principal="alice"), "test") as tx:
            newest = tx.session.exec(
                select(GateDecisionRow)
                .where(
                    GateDecisionRow.model_id == model_id,
                    GateDecisionRow.version == version,
                    GateDecisionRow.target == target,
                )
                .order_by(col(GateDecisionRow.create_time).desc())
            ).first()
            assert newest is not None
            fields = newest.model_dump(exclude={"id", "create_time"})
            ids = [f"{newest.id[:40]}-{i:04d}" for i in range(1, times + 1)]
            for i, decision_id in enumerate(ids, start=1):
                tx.session.add(
                    GateDecisionRow(
                        **fields,
                        id=decision_id,
                        create_time=newest.create_time + timedelta(seconds=i),
                    )
                )
    finally:
        store.close()
    return ids[-1]


def test_the_card_keeps_a_targets_decision_behind_many_on_another(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    cp = controlplane_any
    model_id, production, staging = unique(), unique("prod"), unique("stg")
    with cp.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.create_policy(unique("p"), target=production, rules=["true"])
        alice.create_policy(unique("p"), target=staging, rules=["true"])
        kept = alice.evaluate_gate(model_id, version, production)
        alice.evaluate_gate(model_id, version, staging)
        newest = _repeat_newest(cp.db_url, model_id, version, staging, MANY)
        card = json.loads(alice.model_card(model_id, version, format="json").content)
        listed = alice.list_gate_decisions(model_id, version, target=staging)
    decisions = {d["target"]: d for d in card["gate_decisions"]}
    assert sorted(decisions) == sorted([production, staging])
    assert decisions[production]["name"] == kept.name
    assert decisions[production]["current"] is True
    assert decisions[staging]["name"].endswith(f"/{newest}")
    assert listed[0].name == decisions[staging]["name"]
