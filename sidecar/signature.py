"""A model's tensor signature in Open Inference Protocol terms, read from an ORT session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelplane.errors import FailedPrecondition

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
    #: Number of dimensions.
    rank: int = field(init=False, repr=False, compare=False)
    #: Whether the first dimension varies (so rows of requests can be stacked).
    batch_dynamic: bool = field(init=False, repr=False, compare=False)
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
        object.__setattr__(self, "rank", len(self.shape))
        object.__setattr__(self, "batch_dynamic", bool(self.shape) and self.shape[0] == -1)
        object.__setattr__(self, "tail", tail if all(d >= 0 for d in tail) else None)
        object.__setattr__(self, "tail_size", size)


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in the session's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_input", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_by_output", {t.name: t for t in self.outputs})
        object.__setattr__(self, "_output_names", tuple(t.name for t in self.outputs))

    def input(self, name: str) -> TensorSpec | None:
        return self._by_input.get(name)  # type: ignore[attr-defined,no-any-return]

    def output(self, name: str) -> TensorSpec | None:
        return self._by_output.get(name)  # type: ignore[attr-defined,no-any-return]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names  # type: ignore[attr-defined,no-any-return]

    @property
    def batchable(self) -> bool:
        """Rows of several requests can run as one call: every first dim is dynamic."""
        return all(t.batch_dynamic for t in (*self.inputs, *self.outputs))


def _dims(shape: list[Any] | None) -> tuple[int, ...]:
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _spec(arg: Any, kind: str) -> TensorSpec | None:
    types = ORT_TYPES.get(arg.type)
    if types is None:
        if kind == "input":
            raise FailedPrecondition(
                f"model input {arg.name!r} has type {arg.type}; the sidecar serves tensor inputs "
                "only",
                reason="UNSUPPORTED_MODEL",
            )
        return None
    return TensorSpec(arg.name, types[0], _dims(arg.shape), types[1])


def signature_of(session: Any) -> Signature:
    """The signature of an ``onnxruntime.InferenceSession``.

    Outputs that are not tensors (sequences, maps) are left out; a model without a tensor
    output, or with a non-tensor input, is refused.
    """
    inputs = tuple(s for s in (_spec(a, "input") for a in session.get_inputs()) if s is not None)
    outputs = tuple(s for s in (_spec(a, "output") for a in session.get_outputs()) if s)
    if not outputs:
        raise FailedPrecondition("model has no tensor outputs", reason="UNSUPPORTED_MODEL")
    return Signature(inputs, outputs)
