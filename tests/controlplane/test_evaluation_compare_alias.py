"""An evaluation's ``compare_to`` naming an alias the model does not have: a misspelt alias
leaves a COMPARE_ALIAS_NOT_FOUND warning (scope ``compare``) instead of silently computing no
deltas, while the default alias, which a model lacks before its first release, stays silent."""

from __future__ import annotations

from typing import Any

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def setup(c: Client, trained: TrainedModel) -> tuple[str, int, int]:
    model_id = unique()
    c.create_model(model_id)
    v1, v2 = (
        int(c.register_version(model_id, trained.onnx, feature_names=trained.feature_names).version)
        for _ in range(2)
    )
    return model_id, v1, v2


def evaluate(c: Client, trained: TrainedModel, model_id: str, version: int, **kw: Any) -> Any:
    return c.operation_result(c.evaluate(model_id, version, trained.holdout, label="target", **kw))


def compare_warnings(ev: Any) -> list[dict[str, Any]]:
    return [w for w in ev.report["warnings"] if w["scope"] == "compare"]


def test_a_misspelt_alias_leaves_a_warning(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    with controlplane.client() as c:
        model_id, v1, v2 = setup(c, trained_model)
        c.set_alias(model_id, "production", v1)
        ev = evaluate(c, trained_model, model_id, v2, compare_to="prodution")
    assert ev.compared_version == "" and dict(ev.deltas) == {}
    [warning] = compare_warnings(ev)
    assert warning["code"] == "COMPARE_ALIAS_NOT_FOUND"
    assert "'prodution'" in warning["message"] and model_id in warning["message"]


def test_the_default_alias_missing_before_a_first_release_is_silent(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    with controlplane.client() as c:
        model_id, v1, v2 = setup(c, trained_model)
        first = evaluate(c, trained_model, model_id, v1)
        explicit = evaluate(c, trained_model, model_id, v1, compare_to="champion")
        c.set_alias(model_id, "production", v1)
        found = evaluate(c, trained_model, model_id, v2, compare_to="production")
    assert compare_warnings(first) == [] and compare_warnings(explicit) == []
    assert dict(first.deltas) == {}
    assert compare_warnings(found) == []
    assert found.compared_version == f"models/{model_id}/versions/{v1}" and found.deltas
