"""Reading an ONNX artifact: validity, header facts and the OIP signature."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto

from controlplane.domain import Artifact, Signature, TensorSpec
from modelplane.errors import InvalidArgument

#: ONNX element types and their Open Inference Protocol datatype names.
OIP_DATATYPES = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.STRING: "BYTES",
}


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_ONNX_MODEL")


def _spec(value: Any) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise _invalid(
            f"model input/output {value.name!r} is a {kind}, not a tensor; export it with "
            "plain tensors (for skl2onnx classifiers: options={'zipmap': False})"
        )
    tensor = value.type.tensor_type
    datatype = OIP_DATATYPES.get(tensor.elem_type)
    if datatype is None:
        raise _invalid(f"tensor {value.name!r} has an unsupported element type {tensor.elem_type}")
    shape = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
    ]
    return TensorSpec(value.name, datatype, shape)


def inspect_onnx(data: bytes, sha256: str) -> tuple[Artifact, Signature]:
    """Validate ONNX bytes and extract header facts and the signature.

    Raises INVALID_ARGUMENT (reason INVALID_ONNX_MODEL) when the bytes are not a valid model.
    """
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise _invalid(f"the artifact is not an ONNX model: {type(exc).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise _invalid("the artifact is not an ONNX model: it has no graph")
    try:
        # The checker takes the bytes we hold; given the parsed model it would serialise it again.
        onnx.checker.check_model(data)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise _invalid(f"the ONNX model does not pass onnx.checker: {first}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise _invalid("the ONNX model needs at least one input and one output")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    artifact = Artifact(
        sha256=sha256,
        size_bytes=len(data),
        format="onnx",
        ir_version=model.ir_version,
        opset=opset,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
    )
    return artifact, Signature(inputs, outputs)
