"""A model's tensor signature in Open Inference Protocol terms, read from an ORT session."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from modelplane.errors import FailedPrecondition

log = structlog.get_logger("modelplane.sidecar.signature")

#: ONNX Runtime element type -> (OIP datatype, numpy dtype).
ORT_TYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(string)": ("BYTES", np.dtype(object)),
}

#: OIP datatype -> numpy dtype (BYTES is an object array of ``bytes``).
DTYPES: dict[str, np.dtype[Any]] = {oip: dt for oip, dt in ORT_TYPES.values()}

#: OIP datatype -> numpy dtype of its elements on the wire (little-endian).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    oip: dt.newbyteorder("<") for oip, dt in DTYPES.items() if oip not in ("BYTES", "BOOL")
}
WIRE_DTYPES["BOOL"] = np.dtype(np.bool_)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, OIP datatype and shape (``-1`` where the dim varies)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    #: The model's name for each dim that varies (ONNX ``dim_param``), None for a fixed or an
    #: unnamed one; empty when not known.
    symbols: tuple[str | None, ...] = field(default=(), compare=False, repr=False)
    #: False for an output whose rank the model does not declare (ONNX Runtime shows it like
    #: a scalar, ``shape`` then being empty): its answers have whatever shape they get.
    ranked: bool = True
    #: Number of dimensions.
    rank: int = field(init=False, repr=False, compare=False)
    #: Whether the first dimension varies (so rows of requests can be stacked).
    batch_dynamic: bool = field(init=False, repr=False, compare=False)
    #: Whether the first dimension counts the request's rows (set for the inputs of a
    #: :class:`Signature`, which says how).
    per_row: bool = field(init=False, repr=False, compare=False)
    #: The dims after the first when all are fixed (else None): the fast shape check.
    tail: tuple[int, ...] | None = field(init=False, repr=False, compare=False)
    #: Elements per row when ``tail`` is fixed.
    tail_size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once: the request path reads these for every input of every call.
        tail = self.shape[1:]
        size = 1
        for d in tail:
            size *= max(d, 0)
        dynamic = bool(self.shape) and self.shape[0] == -1
        object.__setattr__(self, "rank", len(self.shape))
        object.__setattr__(self, "batch_dynamic", dynamic)
        object.__setattr__(self, "per_row", dynamic)
        fixed = self.ranked and all(d >= 0 for d in tail)
        object.__setattr__(self, "tail", tail if fixed else None)
        object.__setattr__(self, "tail_size", size)

    @property
    def advertised(self) -> tuple[int, ...]:
        """The shape ModelMetadata gives: ``shape``, or ``[-1]`` when the rank is unknown. The
        Open Inference Protocol has no word for an unknown rank (only -1 for a dim of variable
        size), so this does what Triton does rather than call the tensor a scalar."""
        return self.shape if self.ranked else (-1,)

    def symbol(self, dim: int) -> str | None:
        """The model's name for dim ``dim`` (None: fixed, unnamed or not known)."""
        return self.symbols[dim] if dim < len(self.symbols) else None

    def described(self) -> str:
        """The shape as the model declares it: sizes, names, and ? for unnamed dims."""
        if not self.ranked:
            return "[rank unknown]"
        dims = [
            str(d) if d >= 0 else repr(self.symbol(i)) if self.symbol(i) else "?"
            for i, d in enumerate(self.shape)
        ]
        return f"[{', '.join(dims)}]"


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in the session's order.

    The inputs whose first dim counts the request's rows (``per_row``) are those whose first
    dim varies, less those whose first dim, named apart from the others', sizes a later dim of
    another tensor (an input ``k[m, 2]`` next to ``q[n, 2]`` giving ``out[n, m]``); a model
    without such an input counts the first dim of each input that has one.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        inputs = _with_rows(self.inputs, self.outputs)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "_by_input", {t.name: t for t in inputs})
        object.__setattr__(self, "_by_output", {t.name: t for t in self.outputs})
        object.__setattr__(self, "_output_names", tuple(t.name for t in self.outputs))
        object.__setattr__(self, "_unbatchable", _why_not_batchable(inputs, self.outputs))
        object.__setattr__(self, "_has_bytes", any(t.datatype == "BYTES" for t in inputs))

    def input(self, name: str) -> TensorSpec | None:
        return self._by_input.get(name)  # type: ignore[attr-defined,no-any-return]

    def output(self, name: str) -> TensorSpec | None:
        return self._by_output.get(name)  # type: ignore[attr-defined,no-any-return]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names  # type: ignore[attr-defined,no-any-return]

    @property
    def has_bytes(self) -> bool:
        """Whether an input is BYTES (strings)."""
        return self._has_bytes  # type: ignore[attr-defined,no-any-return]

    def without_batching(self, reason: str) -> Signature:
        """This signature, unbatchable for ``reason`` (found by running the model: see
        :mod:`sidecar.batch_check`)."""
        copy = replace(self)
        object.__setattr__(copy, "_unbatchable", reason)
        return copy

    @property
    def batchable(self) -> bool:
        """Rows of several requests can run as one call: see :attr:`unbatchable`."""
        return self._unbatchable is None  # type: ignore[attr-defined]

    @property
    def unbatchable(self) -> str | None:
        """Why rows of several requests cannot run as one call (None: they can).

        Every input and output must be one row per request row, and each of an output's other
        dims fixed, or named like a dim after the first of an input: requests batch only with
        others whose inputs agree on those dims, so such an output has the same size for each
        request of a batch. A dim the model leaves unnamed, or names after nothing in the
        inputs, may depend on the values in the rows (the longest string of the batch, the
        largest index, the boxes kept), and batching would change each request's answer.
        """
        return self._unbatchable  # type: ignore[attr-defined,no-any-return]


def _with_rows(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> tuple[TensorSpec, ...]:
    """Copies of ``inputs`` with ``per_row`` set for this signature."""
    dynamic = [t for t in inputs if t.batch_dynamic]
    if not dynamic:
        # No dim varies with the request (a model exported for one batch size): its first
        # dims are what it calls rows.
        rows = {t.name for t in inputs if t.rank}
    else:
        named = [t.symbol(0) for t in dynamic if t.symbol(0)]
        rows = {t.name for t in dynamic}
        if len(set(named)) > 1:
            # Inputs name their first dims differently. Exporters name them per input (batch,
            # batch_size): each is rows, unless its first dim sizes another tensor's later
            # dim (k[m, 2] beside q[n, 2] giving out[n, m]), which makes it a side input.
            later = {u.symbol(i) for u in (*inputs, *outputs) for i in range(1, u.rank)}
            rows = {t.name for t in dynamic if t.symbol(0) is None or t.symbol(0) not in later}
            if not rows:
                # Every first dim sizes something: the rows are the most common name's (an
                # output's first dim breaks a tie, then the order of the inputs).
                by_outputs = [t.symbol(0) for t in outputs]
                batch = max(
                    dict.fromkeys(named), key=lambda s: (named.count(s), by_outputs.count(s))
                )
                rows = {t.name for t in dynamic if t.symbol(0) in (None, batch)}
    copies = []
    for t in inputs:
        copy = replace(t)
        object.__setattr__(copy, "per_row", t.name in rows)
        copies.append(copy)
    return tuple(copies)


def _why_not_batchable(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> str | None:
    for t in inputs:
        if not (t.per_row and t.batch_dynamic):
            return f"input {t.name!r} {t.described()} is not one row per request row"
    batch = {t.symbol(0) for t in inputs} - {None}
    pinned = {t.symbol(i) for t in inputs for i in range(1, t.rank)} - {None}
    for t in inputs:
        grows = batch & {t.symbol(i) for i in range(1, t.rank)}
        if grows:
            return f"input {t.name!r} {t.described()} has a dim that grows with the rows"
    for t in outputs:
        if not t.batch_dynamic or t.symbol(0) in pinned:
            return f"output {t.name!r} {t.described()} is not one row per request row"
        for i in range(1, t.rank):
            if t.shape[i] < 0 and t.symbol(i) not in pinned:
                return (
                    f"output {t.name!r} {t.described()}: the size of dim {i} is neither fixed "
                    "nor that of an input's dim, so it may depend on the values in the rows"
                )
    return None


def _dims(shape: list[Any] | None) -> tuple[int, ...]:
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _symbols(shape: list[Any] | None) -> tuple[str | None, ...]:
    if shape is None:
        return ()
    return tuple(d if isinstance(d, str) and d else None for d in shape)


def _not_served(arg: Any) -> str:
    """Why the sidecar cannot carry ``arg`` (a tensor or value type missing from ORT_TYPES)."""
    if str(arg.type).startswith("tensor("):
        served = ", ".join(oip for oip, _ in ORT_TYPES.values())
        return (
            f"its element type {arg.type} has no Open Inference Protocol datatype the sidecar "
            f"serves ({served})"
        )
    return f"it is a {arg.type}, not a tensor"


def _spec(arg: Any, kind: str) -> TensorSpec | None:
    types = ORT_TYPES.get(arg.type)
    if types is None:
        if kind == "input":
            raise FailedPrecondition(
                f"model input {arg.name!r} cannot be served: {_not_served(arg)}",
                reason="UNSUPPORTED_MODEL",
            )
        return None
    return TensorSpec(arg.name, types[0], _dims(arg.shape), types[1], _symbols(arg.shape))


def with_declared_ranks(signature: Signature, path: Path | None) -> Signature:
    """``signature`` with the ranks the ONNX file declares where ONNX Runtime shows a tensor
    as a scalar: it shows one that declares no shape at all (not even its rank) alike
    (``[]``). Only files with such a tensor are read.

    An input without a declared shape is refused (FAILED_PRECONDITION, UNSUPPORTED_MODEL):
    serving it as a scalar would refuse every tensor the model takes. An output without one
    gets the shape ONNX shape inference finds for it, else is marked of unknown rank
    (``ranked`` False) rather than passing for a scalar."""
    scalars = {t.name for t in (*signature.inputs, *signature.outputs) if t.rank == 0}
    if not scalars or path is None:
        return signature
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    unknown = [i.name for i in graph.input if i.name in scalars and _unshaped(i)]
    if unknown:
        raise FailedPrecondition(
            f"model input {unknown[0]!r} declares no shape (not even its rank), so requests "
            "cannot be checked against it; export the model with the input's shape (e.g. "
            "[None, F] for F features per row)",
            reason="UNSUPPORTED_MODEL",
        )
    unranked = {o.name for o in graph.output if o.name in scalars and _unshaped(o)}
    if not unranked:
        return signature
    inferred = _inferred_shapes(model, unranked)
    outputs = []
    for t in signature.outputs:
        if t.name not in unranked:
            outputs.append(t)
        elif t.name in inferred:
            dims = inferred[t.name]
            outputs.append(replace(t, shape=_dims(dims), symbols=_symbols(dims)))
        else:
            outputs.append(replace(t, ranked=False))
    return Signature(signature.inputs, tuple(outputs))


def _unshaped(value: Any) -> bool:
    """Whether an ONNX graph input or output is a tensor that declares no shape."""
    return bool(value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"))


def _inferred_shapes(model: Any, names: set[str]) -> dict[str, list[Any]]:
    """The shapes ONNX shape inference finds for the graph outputs ``names`` (dim sizes,
    dim names, None for unknown dims), for those it finds a rank for."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception as exc:
        log.info("shape inference failed; outputs without a declared rank stay so", error=str(exc))
        return {}
    known = {v.name: v for v in (*graph.value_info, *graph.output) if v.name in names}
    shapes = {}
    for name, value in known.items():
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[name] = [
                d.dim_value if d.HasField("dim_value") else d.dim_param or None
                for d in value.type.tensor_type.shape.dim
            ]
    return shapes


def signature_of(session: Any) -> Signature:
    """The signature of an ``onnxruntime.InferenceSession``.

    Outputs the sidecar cannot carry (sequences, maps, tensors of an element type without an
    OIP datatype such as bfloat16) are left out, with a warning naming them; a model without
    any other output, or with such an input, is refused.
    """
    inputs = tuple(s for s in (_spec(a, "input") for a in session.get_inputs()) if s is not None)
    outputs = tuple(s for s in (_spec(a, "output") for a in session.get_outputs()) if s)
    left_out = {a.name: _not_served(a) for a in session.get_outputs() if a.type not in ORT_TYPES}
    if not outputs:
        why = "; ".join(f"{name!r}: {reason}" for name, reason in left_out.items())
        raise FailedPrecondition(
            f"model has no output the sidecar can serve ({why})", reason="UNSUPPORTED_MODEL"
        )
    if left_out:
        log.warning(
            "model outputs left out: requests cannot ask for them, answers never carry them",
            outputs=left_out,
        )
    return Signature(inputs, outputs)
