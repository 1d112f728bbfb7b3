"""A gate's ``delta`` comes from a stored evaluation of the served version that frames the
problem as the candidate's does (same task, same positive class): an evaluation of the served
version that reads it otherwise is passed over, not taken as the only one there is."""

from __future__ import annotations

import pytest

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel

HAS_DELTA = "has(delta.roc_auc) && delta.roc_auc >= -0.005"


def add(c: Client, trained: TrainedModel, model_id: str) -> int:
    v = c.register_version(
        model_id, trained.onnx, datasets={"train": trained.train}, label="target"
    )
    return int(v.version)


def evaluate(
    c: Client, trained: TrainedModel, model_id: str, version: int, positive_class: str = ""
) -> str:
    op = c.evaluate(
        model_id,
        version,
        trained.holdout,
        label="target",
        compare_to="none",
        positive_class=positive_class,
    )
    return str(c.operation_result(op).name)


def _governed(a: Client, trained_model: TrainedModel) -> tuple[str, str, int, int]:
    """A new model with a served and a candidate version, its target under a delta rule."""
    model_id, target = unique(), unique("prod")
    a.create_model(model_id)
    served, candidate = add(a, trained_model, model_id), add(a, trained_model, model_id)
    a.set_alias(model_id, target, served)
    a.create_policy(unique("p"), target=target, rules=[HAS_DELTA])
    return model_id, target, served, candidate


def test_delta_skips_a_newer_evaluation_of_the_served_version_with_another_positive_class(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    with controlplane_any.client("alice") as a:
        model_id, target, served, candidate = _governed(a, trained_model)
        evaluate(a, trained_model, model_id, served)
        evaluate(a, trained_model, model_id, candidate)
        before = a.evaluate_gate(model_id, candidate, target)
        assert before.passed
        delta = before.results[0].values["delta.roc_auc"]
        # The served version looked at again with the other class as positive, on the same
        # dataset and label: newer, but not comparable with the candidate's evaluation.
        evaluate(a, trained_model, model_id, served, positive_class="0")
        after = a.evaluate_gate(model_id, candidate, target)
        assert after.passed, [r.message for r in after.results]
        assert after.compared_version == f"models/{model_id}/versions/{served}"
        assert after.results[0].values["delta.roc_auc"] == pytest.approx(delta)


def test_only_differently_framed_evaluations_of_the_served_version_say_so(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    with controlplane_any.client("alice") as a:
        model_id, target, served, candidate = _governed(a, trained_model)
        reframed = evaluate(a, trained_model, model_id, served, positive_class="0")
        evaluate(a, trained_model, model_id, candidate)
        gate = a.evaluate_gate(model_id, candidate, target)
        assert not gate.passed and gate.compared_version == ""
        message = gate.results[0].message
        assert "no evaluation of" in message and "reads the problem as it does" in message
        assert reframed in message and "positive class" in message
        assert "on the same dataset exists" not in message
