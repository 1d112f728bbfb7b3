"""``evaluation.serving`` tells a first release from a release whose ``delta`` is missing: a
rule ``evaluation.serving == "" || delta.roc_auc >= ...`` lets the first through, and fails a
later release evaluated on a dataset the served version never saw (``!has(delta.roc_auc)``
would let that one through too)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from modelplane import Client
from modelplane.errors import FailedPrecondition
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel

FIRST_RELEASE_OR_NO_WORSE = 'evaluation.serving == "" || delta.roc_auc >= -0.005'


def add(c: Client, trained: TrainedModel, model_id: str) -> int:
    v = c.register_version(
        model_id, trained.onnx, datasets={"train": trained.train}, label="target"
    )
    return int(v.version)


def evaluate(c: Client, model_id: str, version: int, data: Path) -> None:
    c.operation_result(c.evaluate(model_id, version, data, label="target", compare_to="none"))


def test_a_release_evaluated_on_a_dataset_the_served_version_never_saw_fails_the_gate(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    model_id, target = unique(), unique("prod")
    other = tmp_path / "holdout-minus-one.csv"
    pacsv.write_csv(pacsv.read_csv(trained_model.holdout).slice(1), other)  # a new sha256
    with controlplane.client("alice") as a:
        a.create_model(model_id)
        a.create_policy(unique("p"), target=target, rules=[FIRST_RELEASE_OR_NO_WORSE])
        v1, v2 = add(a, trained_model, model_id), add(a, trained_model, model_id)
        # A first release: nothing served, no delta, and the rule lets it through.
        evaluate(a, model_id, v1, trained_model.holdout)
        first = a.evaluate_gate(model_id, v1, target)
        assert first.passed, [r.message for r in first.results]
        assert first.results[0].values["evaluation.serving"] == ""
        a.set_alias(model_id, target, v1)
        # v2 evaluated only on a dataset v1 never was: no delta, and that is not a first release.
        evaluate(a, model_id, v2, other)
        gate = a.evaluate_gate(model_id, v2, target)
        assert not gate.passed and gate.compared_version == ""
        served = f"models/{model_id}/versions/{v1}"
        assert gate.results[0].values["evaluation.serving"] == served
        assert gate.results[0].outcome == "error"
        assert "no evaluation of" in gate.results[0].message
        with pytest.raises(FailedPrecondition) as refused:
            a.set_alias(model_id, target, v2)
        assert refused.value.reason == "GATE_FAILED"
        # Evaluated on v1's dataset, v2 has its delta and passes.
        evaluate(a, model_id, v2, trained_model.holdout)
        again = a.evaluate_gate(model_id, v2, target)
        assert again.passed and again.compared_version == served
        assert a.set_alias(model_id, target, v2).version.endswith(f"/versions/{v2}")


def test_serving_is_there_without_an_evaluation(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    """What the target serves does not come from an evaluation: a rule can read it before
    there is one (a later release without one still fails, its delta missing)."""
    model_id, target = unique(), unique("prod")
    with controlplane.client("alice") as a:
        a.create_model(model_id)
        a.create_policy(unique("p"), target=target, rules=[FIRST_RELEASE_OR_NO_WORSE])
        v1, v2 = add(a, trained_model, model_id), add(a, trained_model, model_id)
        assert a.evaluate_gate(model_id, v1, target).passed
        a.set_alias(model_id, target, v1)
        gate = a.evaluate_gate(model_id, v2, target)
        assert not gate.passed
        assert gate.results[0].values["evaluation.serving"] == f"models/{model_id}/versions/{v1}"
