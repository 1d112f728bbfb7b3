"""A rollout's candidate must take every request the champion takes and answer in the same
form: one that would refuse callers' requests as bad input (which guards do not count as the
model's errors) is refused at StartRollout with INCOMPATIBLE_SIGNATURE, and nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.domain import Signature, TensorSpec
from controlplane.rollouts.compatibility import describe, interface_changes
from modelplane import Client
from modelplane.errors import FailedPrecondition
from modelplane.testing import onnx_models
from tests.conftest import unique


def _sig(inputs: list[TensorSpec], outputs: list[TensorSpec] | None = None) -> Signature:
    return Signature(inputs=inputs, outputs=outputs or [TensorSpec("y", "FP32", [-1, 1])])


X = TensorSpec("x", "FP32", [-1, 8])


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (_sig([X]), []),
        # Wider is fine: a dynamic dim takes what a fixed one did; extra outputs are unasked.
        (_sig([TensorSpec("x", "FP32", [-1, -1])]), []),
        (_sig([X], [TensorSpec("y", "FP32", [-1, 1]), TensorSpec("p", "FP32", [-1, 2])]), []),
        (_sig([TensorSpec("x", "FP32", [-1, 4])]), ["input 'x' has shape [-1, 4], not [-1, 8]"]),
        (_sig([TensorSpec("x", "FP64", [-1, 8])]), ["input 'x' is FP64, not FP32"]),
        (
            _sig([TensorSpec("x", "FP32", [-1, 8, 1])]),
            ["input 'x' has shape [-1, 8, 1], not [-1, 8]"],
        ),
        (
            _sig([TensorSpec("features", "FP32", [-1, 8])]),
            ["input 'x' is missing", "input 'features' is new"],
        ),
        (_sig([X, TensorSpec("z", "INT64", [-1, 1])]), ["input 'z' is new"]),
        (_sig([X], [TensorSpec("score", "FP32", [-1, 1])]), ["output 'y' is missing"]),
        (_sig([X], [TensorSpec("y", "INT64", [-1, 1])]), ["output 'y' is INT64, not FP32"]),
        (
            _sig([X], [TensorSpec("y", "FP32", [-1, 3])]),
            ["output 'y' has shape [-1, 3], not [-1, 1]"],
        ),
        (_sig([X], [TensorSpec("y", "FP32", [-1, -1])]), []),
    ],
)
def test_interface_changes(candidate: Signature, expected: list[str]) -> None:
    assert interface_changes(_sig([X]), candidate) == expected


def test_a_narrower_candidate_is_a_change_the_other_way_round_is_not() -> None:
    dynamic = _sig([TensorSpec("x", "FP32", [-1, -1])])
    assert interface_changes(dynamic, _sig([X])) == ["input 'x' has shape [-1, 8], not [-1, -1]"]
    assert interface_changes(_sig([X]), dynamic) == []


def test_describe_shows_the_first_five() -> None:
    changes = [f"input 'x{i}' is new" for i in range(8)]
    assert describe(changes) == "; ".join(changes[:5]) + "; and 3 more"
    assert describe(changes[:2]) == "; ".join(changes[:2])


@pytest.mark.parametrize("strategy", ["canary", "shadow", "ab", "blue_green"])
def test_a_candidate_with_other_inputs_is_refused_at_start(
    c: Client, tmp_path: Path, strategy: str
) -> None:
    model_id = unique()
    c.create_model(model_id)
    eight = onnx_models.save(onnx_models.mlp(8, (8,), seed=0), tmp_path / "m8.onnx")
    four = onnx_models.save(onnx_models.mlp(4, (8,), seed=1), tmp_path / "m4.onnx")
    other = onnx_models.save(onnx_models.mlp(8, (8,), seed=2), tmp_path / "m8b.onnx")
    champion = int(c.register_version(model_id, eight, capture_env=False).version)
    narrow = int(c.register_version(model_id, four, capture_env=False).version)
    same = int(c.register_version(model_id, other, capture_env=False).version)
    dep = unique("d")
    c.create_deployment(dep, model=model_id, champion_version=champion)
    before = c.get_deployment(dep)
    events = len(list(c.audit_events(resource=f"deployments/{dep}")))
    with pytest.raises(FailedPrecondition) as refused:
        c.start_rollout(dep, narrow, strategy=strategy)
    err = refused.value
    assert err.reason == "INCOMPATIBLE_SIGNATURE"
    assert f"version {narrow} cannot take the traffic" in err.message
    assert "has shape [-1, 4], not [-1, 8]" in err.message
    assert err.metadata["candidate"] == f"models/{model_id}/versions/{narrow}"
    assert err.metadata["champion"] == f"models/{model_id}/versions/{champion}"
    # Nothing changed: no rollout, same etag, no audit event.
    after = c.get_deployment(dep)
    assert after.etag == before.etag and not after.HasField("rollout")
    assert len(list(c.audit_events(resource=f"deployments/{dep}"))) == events
    # A candidate with the champion's interface starts.
    started = c.start_rollout(dep, same, strategy=strategy)
    assert started.rollout.candidate_version == same
