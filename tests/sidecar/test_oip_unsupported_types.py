"""Tensors of an element type the Open Inference Protocol side cannot carry (bfloat16 has no
numpy type in ONNX Runtime's Python API): an output of that type is left out with a warning
naming it, an input of it refuses the model with a message naming the type, not calling the
tensor something else, and a model with no other output is refused naming what was left out.
Real ONNX Runtime sessions on models built here."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import structlog
from onnx import TensorProto, helper

from modelplane.errors import FailedPrecondition
from sidecar.signature import signature_of


def _session(inputs: list, nodes: list, outputs: list) -> ort.InferenceSession:  # type: ignore[type-arg]
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _x(elem: int = TensorProto.FLOAT) -> object:
    return helper.make_tensor_value_info("x", elem, ["n", 4])


def test_a_bfloat16_output_is_left_out_with_a_warning_naming_it() -> None:
    session = _session(
        [_x()],
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("Cast", ["x"], ["z"], to=TensorProto.BFLOAT16),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("z", TensorProto.BFLOAT16, ["n", 4]),
        ],
    )
    with structlog.testing.capture_logs() as logs:
        signature = signature_of(session)
    assert [t.name for t in signature.outputs] == ["y"]
    (warning,) = [x for x in logs if x["log_level"] == "warning"]
    assert set(warning["outputs"]) == {"z"}
    assert "tensor(bfloat16)" in warning["outputs"]["z"]
    assert "left out" in warning["event"]


def test_a_bfloat16_input_refuses_the_model_naming_its_type() -> None:
    session = _session(
        [_x(TensorProto.BFLOAT16)],
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    with pytest.raises(FailedPrecondition) as refused:
        signature_of(session)
    assert refused.value.reason == "UNSUPPORTED_MODEL"
    message = refused.value.message
    assert "model input 'x'" in message and "tensor(bfloat16)" in message
    assert "not a tensor" not in message and "FP16" in message  # the types it does serve


def test_a_model_whose_only_output_is_bfloat16_is_refused_naming_it() -> None:
    session = _session(
        [_x()],
        [helper.make_node("Cast", ["x"], ["z"], to=TensorProto.BFLOAT16)],
        [helper.make_tensor_value_info("z", TensorProto.BFLOAT16, ["n", 4])],
    )
    with pytest.raises(FailedPrecondition) as refused:
        signature_of(session)
    assert refused.value.reason == "UNSUPPORTED_MODEL"
    assert "'z'" in refused.value.message and "tensor(bfloat16)" in refused.value.message
