"""A gate's ``delta`` through a real control plane: measured against the version the gate's
target serves now (an alias's version, a deployment's champion), never against an alias the
evaluation's caller chose; empty, with a hint, when there is nothing to measure against; and a
passed decision goes stale when the target moves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from modelplane import Client
from modelplane.errors import FailedPrecondition
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel

NO_WORSE = "delta.roc_auc >= -0.005"
FIRST_RELEASE_OR_NO_WORSE = "!has(delta.roc_auc) || delta.roc_auc >= -0.005"


@pytest.fixture(scope="session")
def weak_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression on the trained model's split that sees only its first feature
    (the others zeroed), so its roc_auc is clearly lower; same inputs as the trained model."""
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_tr, _, y_tr, _ = train_test_split(x, data.target, test_size=0.25, random_state=0)
    blind = x_tr.copy()
    blind[:, 1:] = 0
    clf = LogisticRegression(max_iter=5000).fit(blind, y_tr)
    onx = to_onnx(clf, x_tr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = tmp_path_factory.mktemp("weak") / "weak.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def add(c: Client, trained: TrainedModel, model_id: str, onnx: Path) -> int:
    v = c.register_version(model_id, onnx, datasets={"train": trained.train}, label="target")
    return int(v.version)


def evaluate(c: Client, trained: TrainedModel, model_id: str, version: int, **kw: str) -> float:
    ev = c.operation_result(c.evaluate(model_id, version, trained.holdout, label="target", **kw))
    return float(ev.metrics["roc_auc"])


def candidate(
    c: Client, trained: TrainedModel, model_id: str, target: str, rule: str
) -> tuple[int, int]:
    """A new model ``model_id`` whose v1 the alias ``target`` serves and whose v2 is evaluated
    against it, under a new policy of ``rule`` on ``target``: (v1, v2)."""
    c.create_model(model_id)
    v1, v2 = (add(c, trained, model_id, trained.onnx) for _ in range(2))
    c.set_alias(model_id, target, v1)
    c.create_policy(unique("p"), target=target, rules=[rule])
    evaluate(c, trained, model_id, v2, compare_to=target)
    return v1, v2


def test_delta_is_against_the_version_the_alias_serves_not_the_callers_alias(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel, weak_onnx: Path
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane_any.client("alice") as a:
        a.create_model(model_id)
        good = add(a, trained_model, model_id, trained_model.onnx)
        sandbox = add(a, trained_model, model_id, weak_onnx)
        candidate = add(a, trained_model, model_id, weak_onnx)
        a.set_alias(model_id, target, good)
        a.set_alias(model_id, "sandbox", sandbox)
        served = f"models/{model_id}/versions/{good}"
        a.create_policy(
            unique("p"),
            target=target,
            rules=[NO_WORSE, f'evaluation.compared_version == "{served}"'],
        )
        # Compared with a weak version the caller chose: no worse than it, but that is not
        # what the target serves, so the gate has no delta to read.
        weak_auc = evaluate(a, trained_model, model_id, candidate, compare_to="sandbox")
        first = a.evaluate_gate(model_id, candidate, target)
        assert not first.passed
        assert [r.outcome for r in first.results] == ["error", "failed"]
        assert f"--compare-to {target}" in first.results[0].message
        assert served in first.results[0].message
        assert first.results[1].values["evaluation.compared_version"] == ""
        with pytest.raises(FailedPrecondition) as refused:
            a.set_alias(model_id, target, candidate)
        assert refused.value.reason == "GATE_FAILED"
        # A stored evaluation of the served version on the same data gives the delta.
        good_auc = evaluate(a, trained_model, model_id, good, compare_to="none")
        assert good_auc - weak_auc > 0.005
        second = a.evaluate_gate(model_id, candidate, target)
        assert [r.outcome for r in second.results] == ["failed", "passed"]
        assert second.results[0].values["delta.roc_auc"] == pytest.approx(weak_auc - good_auc)
        # So does evaluating against the target itself.
        evaluate(a, trained_model, model_id, candidate, compare_to=target)
        third = a.evaluate_gate(model_id, candidate, target)
        assert [r.outcome for r in third.results] == ["failed", "passed"]
        assert third.results[0].values["delta.roc_auc"] == pytest.approx(weak_auc - good_auc)


def test_delta_for_a_deployment_is_against_its_champion(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel, weak_onnx: Path
) -> None:
    model_id, dep = unique(), unique("d")
    target = f"deployments/{dep}"
    with controlplane_any.client("alice") as a:
        a.create_model(model_id)
        good = add(a, trained_model, model_id, trained_model.onnx)
        candidate = add(a, trained_model, model_id, weak_onnx)
        a.set_alias(model_id, "champion", candidate)
        a.create_deployment(dep, model=model_id, champion_version=good)
        a.create_policy(unique("p"), target=target, rules=[NO_WORSE])
        # Its own alias named "champion" points at the candidate itself: no deltas there.
        weak_auc = evaluate(a, trained_model, model_id, candidate)
        first = a.evaluate_gate(model_id, candidate, target)
        assert [r.outcome for r in first.results] == ["error"]
        assert f"evaluate version {good} on dataset" in first.results[0].message
        good_auc = evaluate(a, trained_model, model_id, good, compare_to="none")
        second = a.evaluate_gate(model_id, candidate, target)
        assert not second.passed
        assert second.results[0].values["delta.roc_auc"] == pytest.approx(weak_auc - good_auc)
        with pytest.raises(FailedPrecondition) as refused:
            a.start_rollout(dep, candidate)
        assert refused.value.reason == "GATE_FAILED"


def test_a_first_release_and_a_decision_that_goes_stale_when_the_target_moves(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, target = unique(), unique("prod")
    with controlplane_any.client("alice") as a:
        a.create_model(model_id)
        v1, v2, v3 = (add(a, trained_model, model_id, trained_model.onnx) for _ in range(3))
        a.create_policy(unique("p"), target=target, rules=[FIRST_RELEASE_OR_NO_WORSE])
        # The target points nowhere yet: delta is empty and the rule lets the release through.
        evaluate(a, trained_model, model_id, v1)
        first = a.evaluate_gate(model_id, v1, target)
        assert first.passed and first.results[0].missing == ["delta.roc_auc"]
        a.set_alias(model_id, target, v1)
        # v2 is gated against v1, which the target serves.
        evaluate(a, trained_model, model_id, v2, compare_to=target)
        gated = a.evaluate_gate(model_id, v2, target)
        assert gated.passed and gated.results[0].values["delta.roc_auc"] == pytest.approx(0.0)
        # The target moves to v3: the decision for v2 measured against v1 no longer counts.
        evaluate(a, trained_model, model_id, v3, compare_to=target)
        assert a.evaluate_gate(model_id, v3, target).passed
        a.set_alias(model_id, target, v3)
        with pytest.raises(FailedPrecondition) as stale:
            a.set_alias(model_id, target, v2)
        assert stale.value.reason == "GATE_FAILED"
        assert "evidence changed" in stale.value.message
        assert f"delta is against models/{model_id}/versions/{v3} now" in stale.value.message
        # Gated again, v2's delta comes from v3's stored evaluation on the same data.
        again = a.evaluate_gate(model_id, v2, target)
        assert again.passed and again.results[0].values["delta.roc_auc"] == pytest.approx(0.0)
        moved = a.set_alias(model_id, target, v2)
    assert moved.version == f"models/{model_id}/versions/{v2}"


def test_setting_an_alias_again_to_the_version_it_serves_keeps_its_decision(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """A retry or a new reason moves nothing: the decision that moved the alias still stands
    with the reference it was measured against, as long as nothing else changed."""
    model_id, target = unique(), unique("prod")
    with controlplane_any.client("alice") as a:
        v1, v2 = candidate(a, trained_model, model_id, target, NO_WORSE)
        gated = a.evaluate_gate(model_id, v2, target)
        assert gated.passed and gated.compared_version == f"models/{model_id}/versions/{v1}"
        a.set_alias(model_id, target, v2)
        again = a.set_alias(model_id, target, v2, reason="retry")
        assert again.version.endswith(f"/versions/{v2}") and again.reason == "retry"
        card = json.loads(a.model_card(model_id, v2, format="json").content)
        assert [(d["name"], d["current"]) for d in card["gate_decisions"]] == [(gated.name, True)]
        # Gated again now that it serves v2 itself, delta is empty and the plain rule fails.
        regated = a.evaluate_gate(model_id, v2, target)
        assert not regated.passed and regated.compared_version == ""
        with pytest.raises(FailedPrecondition) as failed:
            a.set_alias(model_id, target, v2, reason="after a failed gate")
        assert failed.value.reason == "GATE_FAILED"
        assert "latest gate decision" in failed.value.message
        # A new evaluation still makes the decision stale on a re-set.
        other, target2 = unique(), unique("prod")
        _, w2 = candidate(a, trained_model, other, target2, NO_WORSE)
        assert a.evaluate_gate(other, w2, target2).passed
        a.set_alias(other, target2, w2)
        evaluate(a, trained_model, other, w2, compare_to="none")
        with pytest.raises(FailedPrecondition) as stale:
            a.set_alias(other, target2, w2, reason="retry")
        assert stale.value.reason == "GATE_FAILED"
        assert "a new evaluation" in stale.value.message
