"""A passed gate decision gone stale: GATE_FAILED names the part of the evidence that changed
since (an approval, the labels, what the target serves, what ``delta`` is measured against),
comparing part by part what the decision recorded with what holds now; it never says "delta is
empty now" when the served version did not move. A decision recorded without the digests of
its parts (before this release recorded them) keeps the general wording for the parts it cannot
tell apart. Real control planes on SQLite, the client and the CLI."""

from __future__ import annotations

import pytest

from controlplane.store import Store
from controlplane.store.tables import GateDecisionRow
from modelplane.cli import main
from modelplane.errors import FailedPrecondition
from modelplane.server.context import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_delta import (
    FIRST_RELEASE_OR_NO_WORSE,
    NO_WORSE,
    add,
    candidate,
    evaluate,
)
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE

EVERY_CAUSE = "an approval was given or withdrawn, the version's labels changed, or what"
GENERAL = "an approval was given, withdrawn or altered, or the version's labels or lineage changed"


def _refused(cp: RunningControlPlane, model_id: str, alias: str, version: int) -> str:
    """The GATE_FAILED message of setting ``alias`` to ``version``."""
    with cp.client("alice") as alice, pytest.raises(FailedPrecondition) as refused:
        alice.set_alias(model_id, alias, version)
    assert refused.value.reason == "GATE_FAILED"
    return refused.value.message


def _changed(message: str, decision: str) -> str:
    """What ``message`` says changed since ``decision`` (the text in its parentheses)."""
    lead = f"the evidence changed since gate decision {decision} ("
    assert lead in message, message
    return message.split(lead, 1)[1].rsplit("); run `modelplane gate", 1)[0]


def _without_part_digests(cp: RunningControlPlane, decision: str) -> None:
    """Alter the stored gate decision named ``decision`` into what a release before the part
    digests (and the counted approvals) were recorded stored: its reference without them."""
    store = Store.open(cp.db_url)
    try:
        with store.write(RequestContext(principal="test"), "test") as tx:
            row = tx.session.get(GateDecisionRow, decision.rpartition("/")[2])
            assert row is not None
            kept = {
                k: v
                for k, v in row.reference.items()
                if not k.endswith("_sha256") and k != "counted_approvals"
            }
            assert set(kept) == {"serving", "compared_version", "evaluation", "digest_format"}
            row.reference = kept
            tx.session.add(row)
    finally:
        store.close()


def test_a_label_change_alone_is_named_by_alias_set(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.create_policy(unique("p"), target=target, rules=["true"])
        gated = alice.evaluate_gate(model_id, version, target)
        assert gated.passed
        alice.update_version(model_id, version, labels={"team": "risk"})
    capsys.readouterr()
    server = ["--server", controlplane.address, "--as", "alice"]
    code = main([*server, "alias", "set", model_id, target, str(version)])
    err = capsys.readouterr().err
    assert code != 0 and "GATE_FAILED" in err
    assert _changed(err, gated.name) == "the version's labels changed"
    # The target serves nothing, before and now: nothing is said of it.
    assert "delta is empty now" not in err and "serves moved" not in err
    assert EVERY_CAUSE not in err


def test_a_withdrawn_approval_alone_is_named(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.create_policy(unique("p"), target=target, rules=[RISK_RULE])
    with controlplane.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, target)
    with controlplane.client("alice") as alice:
        gated = alice.evaluate_gate(model_id, version, target)
        assert gated.passed
    with controlplane.client("bob") as bob:
        bob.with_roles(["risk"]).approve(model_id, version, target, decision="reject", comment="x")
    message = _refused(controlplane, model_id, target, version)
    assert _changed(message, gated.name) == "an approval was given, withdrawn or altered"


def test_the_served_version_moving_names_both_versions_and_other_changes_too(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as a:
        a.create_model(model_id)
        v1, v2, v3 = (add(a, trained_model, model_id, trained_model.onnx) for _ in range(3))
        a.create_policy(unique("p"), target=target, rules=[FIRST_RELEASE_OR_NO_WORSE])
        evaluate(a, trained_model, model_id, v1)
        assert a.evaluate_gate(model_id, v1, target).passed
        a.set_alias(model_id, target, v1)
        evaluate(a, trained_model, model_id, v2, compare_to=target)
        gated = a.evaluate_gate(model_id, v2, target)
        assert gated.passed
        evaluate(a, trained_model, model_id, v3, compare_to=target)
        assert a.evaluate_gate(model_id, v3, target).passed
        a.set_alias(model_id, target, v3)
    name = f"models/{model_id}/versions/"
    moved = (
        f"what {target} serves moved from {name}{v1} to {name}{v3}; delta is against {name}{v3} now"
    )
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == moved
    # With a label change as well, both are named.
    with controlplane.client("alice") as a:
        a.update_version(model_id, v2, labels={"team": "risk"})
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == f"the version's labels changed; {moved}"
    # Recorded without the part digests, the served part is still told apart, the rest not.
    _without_part_digests(controlplane, gated.name)
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == f"{GENERAL}; {moved}"
    with controlplane.client("alice") as a:
        a.update_version(model_id, v2, labels={})
    # Only the served version moved: that much the combined digest tells.
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == moved


def test_setting_the_served_version_again_after_a_label_change_names_only_the_labels(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """The decision moved the alias to its version: the reference it recorded stands in for
    what the target serves, which did not move since."""
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as alice:
        _, v2 = candidate(alice, trained_model, model_id, target, NO_WORSE)
        gated = alice.evaluate_gate(model_id, v2, target)
        assert gated.passed
        alice.set_alias(model_id, target, v2)
        alice.update_version(model_id, v2, labels={"reviewed": "no"})
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == "the version's labels changed"
    assert "delta is empty now" not in message
    # Recorded without the part digests: the general wording, still nothing of the target.
    _without_part_digests(controlplane, gated.name)
    message = _refused(controlplane, model_id, target, v2)
    assert _changed(message, gated.name) == GENERAL
    assert "delta is empty now" not in message


def test_delta_measured_against_the_served_version_once_it_is_evaluated(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """The served version did not move, but an evaluation of it on the same dataset was stored
    after the decision: ``delta``, empty then, can be measured now."""
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as a:
        a.create_model(model_id)
        v1, v2 = (add(a, trained_model, model_id, trained_model.onnx) for _ in range(2))
        a.set_alias(model_id, target, v1)
        a.create_policy(unique("p"), target=target, rules=[FIRST_RELEASE_OR_NO_WORSE])
        evaluate(a, trained_model, model_id, v2, compare_to="none")
        gated = a.evaluate_gate(model_id, v2, target)
        assert gated.passed and gated.compared_version == ""
        evaluate(a, trained_model, model_id, v1, compare_to="none")
    message = _refused(controlplane, model_id, target, v2)
    name = f"models/{model_id}/versions/{v1}"
    assert _changed(message, gated.name) == f"delta can be measured against {name} now"
    assert "delta is empty now" not in message and "serves moved" not in message
