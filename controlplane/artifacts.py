"""Reading an ONNX artifact: validity, header facts and the OIP signature."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import onnx
from onnx import TensorProto

from controlplane.domain import Artifact, Signature, TensorSpec
from controlplane.names import check_text, shown
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
    return InvalidArgument(
        message, reason="INVALID_ONNX_MODEL", metadata={"field": "artifact_sha256"}
    )


#: The opset domains whose newest version the installed onnx package knows, by their names in
#: a model's opset_import ("" and "ai.onnx" are one domain).
_DEFAULT_DOMAIN = ("", "ai.onnx")
_ML_DOMAIN = "ai.onnx.ml"


@functools.cache
def _newest_opset(domain: str) -> int:
    """The newest opset of ``domain`` (the default domain or ai.onnx.ml) the installed onnx
    package knows."""
    if domain in _DEFAULT_DOMAIN:
        return int(onnx.defs.onnx_opset_version())
    return max(
        s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain
    )


def _refuse_unknown_versions(model: onnx.ModelProto) -> None:
    """INVALID_ONNX_MODEL when the model declares an IR version or imports an opset of the
    default or ai.onnx.ml domain newer than the installed onnx package knows: onnx.checker
    lets such a model pass, and no runtime this server's onnx goes with can load it. Other
    domains (a runtime's contrib operators) are left to the runtime."""
    if model.ir_version > onnx.IR_VERSION:
        raise _invalid(
            f"the ONNX model declares IR version {model.ir_version}, newer than the highest "
            f"this server supports ({onnx.IR_VERSION}, onnx {onnx.__version__}); export it "
            f"with IR version {onnx.IR_VERSION} or lower"
        )
    for opset in model.opset_import:
        if opset.domain not in (*_DEFAULT_DOMAIN, _ML_DOMAIN):
            continue
        newest = _newest_opset(opset.domain)
        if opset.version > newest:
            domain = opset.domain or "ai.onnx"
            raise _invalid(
                f"the ONNX model imports opset {opset.version} of domain {domain}, newer than "
                f"the highest this server supports ({newest}, onnx {onnx.__version__}); "
                f"export it with opset {newest} or lower"
            )


def _text(value: str, what: str) -> str:
    """``value``, a name or header string read from the model, when it is one line of at most
    1,024 characters without control characters: it is shown in tables and logs, and a
    terminal would act on escape sequences in it."""
    try:
        return check_text(value, what, 1024, single_line=True)
    except InvalidArgument as exc:
        raise _invalid(f"the ONNX model's {exc.message}") from None


def _spec(value: Any) -> TensorSpec:
    _text(value.name, f"tensor name {shown(value.name)}")
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


def _tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor a model holds: initializers (sparse ones too) and tensor attributes of the
    nodes of its graph, of the subgraphs those nodes carry (If, Loop, Scan), of its training
    graphs, and of its functions."""
    graphs = [model.graph]
    for info in model.training_info:
        graphs += [info.initialization, info.algorithm]
    attributes = [a for f in model.functions for a in f.attribute_proto]
    attributes += [a for f in model.functions for n in f.node for a in n.attribute]
    while graphs or attributes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            attributes += [a for n in graph.node for a in n.attribute]
            continue
        attribute = attributes.pop()
        yield attribute.t
        yield from attribute.tensors
        for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
            yield from (sparse.values, sparse.indices)
        graphs += [attribute.g, *attribute.graphs]


def _refuse_external_data(model: onnx.ModelProto) -> None:
    """INVALID_ONNX_MODEL when a tensor keeps its data in another file: the server has only the
    uploaded bytes, and resolving the file's location (as onnx.checker would) would read the
    server's own files."""
    for tensor in _tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL and not tensor.external_data:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        named = f" {shown(location)}" if location else ""
        raise _invalid(
            f"tensor {shown(tensor.name)} keeps its data in an external file{named}; "
            "external data is not supported: the artifact must be one "
            "self-contained ONNX file (load the model with its data and save it with "
            "onnx.save_model(model, path, save_as_external_data=False))"
        )


def inspect_onnx(data: bytes, sha256: str) -> tuple[Artifact, Signature]:
    """Validate ONNX bytes and extract header facts and the signature.

    Raises INVALID_ARGUMENT (reason INVALID_ONNX_MODEL, field ``artifact_sha256``) when the
    bytes are not a valid model, when a tensor keeps its data in an external file, and when
    the model's IR version or default-domain or ai.onnx.ml opset is newer than the installed
    onnx package knows (both refused before onnx.checker runs).
    """
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise _invalid(f"the artifact is not an ONNX model: {type(exc).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise _invalid("the artifact is not an ONNX model: it has no graph")
    _refuse_external_data(model)
    _refuse_unknown_versions(model)
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
    _text(model.producer_name, "producer name")
    _text(model.producer_version, "producer version")
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
