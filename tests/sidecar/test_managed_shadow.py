"""Shadow comparison on a real managed sidecar: the champion's answers are compared with the
shadow's whole, whatever subset of outputs the client asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from control_plane_double import FakeControlPlane, state
from onnx import TensorProto, helper, numpy_helper
from sidecar_helpers import output_array, raw_request, stub

NAME = "fraud"


def classifier(seed: int) -> bytes:
    """``input`` FP32 [n, 8] -> ``label`` INT64 [n] and ``probabilities`` FP32 [n, 2]."""
    w = np.random.default_rng(seed).standard_normal((8, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2]),
        ],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("asked", [["label"], ["probabilities"], []], ids=str)
def test_shadow_compares_every_output_whatever_the_client_asked(
    managed: Any, plane: FakeControlPlane, tmp_path: Path, asked: list[str]
) -> None:
    models = {1: classifier(1), 2: classifier(2)}
    versions = {n: (plane.add_blob(b), len(b), "") for n, b in models.items()}
    h = managed()
    plane.push(state(NAME, 1, versions, 1, candidate=2, shadow=1.0, rollout_id="s"))
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32)
    s = stub(h.port)
    for i in range(len(x)):
        request = raw_request(NAME, {"input": ("FP32", x[i : i + 1])}, id=f"q{i}")
        for name in asked:
            request.outputs.add(name=name)
        reply = s.ModelInfer(request)
        assert [o.name for o in reply.outputs] == (asked or ["label", "probabilities"])
        if asked == ["label"]:
            assert output_array(reply, 0, np.int64).shape == (1,)
    reports = plane.wait_reports(lambda rs: sum(r.shadow.pairs for r in rs) >= len(x))
    shadows = [r.shadow for r in reports if r.shadow.pairs]
    expected = {}
    for n, data in models.items():
        labels, probabilities = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )
        expected[n] = (labels, probabilities[:, 1])
    assert sum(sh.pairs for sh in shadows) == len(x)
    assert sum(sh.disagreements for sh in shadows) == int(
        np.count_nonzero(expected[1][0] != expected[2][0])
    )
    assert sum(sh.abs_diff_sum for sh in shadows) == pytest.approx(
        float(np.abs(expected[1][1] - expected[2][1]).sum()), rel=1e-4
    )
    champion = np.sum([list(sh.champion_scores.counts) for sh in shadows], axis=0)
    want = np.bincount(
        np.minimum((expected[1][1].astype(np.float64) * 50).astype(np.int64), 49), minlength=50
    )
    assert champion.tolist() == want.tolist()
