"""Decoding and validating OIP inference requests against a model signature (responses are
encoded by :mod:`sidecar.response`).

Every check that can fail on client input happens here, before anything reaches ONNX Runtime
and before large buffers are allocated; failures raise :class:`InvalidArgument` with an
UPPER_SNAKE reason and a message naming the tensor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelplane.errors import InvalidArgument
from sidecar.signature import WIRE_DTYPES, Signature, TensorSpec

_LEN = struct.Struct("<I")

#: Typed-contents field that carries each datatype, and the value range narrower ints allow.
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_TYPED_FIELDS = tuple(sorted(set(_TYPED_FIELD.values())))
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
#: The exact numpy type of each typed field's elements: decoding through a guessed type would
#: turn a uint64 list that mixes values below and above 2**63 into float64 and lose digits.
_FIELD_DTYPE = {
    "bool_contents": np.bool_,
    "int_contents": np.int64,
    "int64_contents": np.int64,
    "uint_contents": np.uint64,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float64,
    "fp64_contents": np.float64,
}

#: Request parameters whose value type is known; others are accepted when they carry a value.
_PARAMETER_KINDS = {
    "priority": ("int64_param", "uint64_param"),
    "timeout": ("int64_param", "uint64_param"),
    "sequence_id": ("int64_param", "uint64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
    "binary_data_output": ("bool_param",),
}


_SHARED_MEMORY = (
    "parameter {key!r} names shared memory, which this server does not offer; send the tensor "
    "in the request (raw_input_contents or contents) and read outputs from raw_output_contents"
)
#: Parameters of extensions this server does not offer, refused (UNSUPPORTED_PARAMETER) with
#: their message. The shared-memory ones place a tensor in (or ask for it in) a region
#: registered with the server: answering inline instead would leave the client reading its
#: region.
_UNSUPPORTED = {
    "classification": "classification outputs are not offered",
    "shared_memory_region": _SHARED_MEMORY,
    "shared_memory_byte_size": _SHARED_MEMORY,
    "shared_memory_offset": _SHARED_MEMORY,
}


#: The default of ``Limits.max_bytes_elements`` (``--max-bytes-elements``).
DEFAULT_MAX_BYTES_ELEMENTS = 2**20


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may declare."""

    max_request_rows: int
    max_tensor_elements: int
    reject_non_finite: bool = False
    #: Most BYTES elements over all inputs of a request: each costs a Python string and an
    #: ONNX Runtime one (about 100 bytes whatever its length), so four bytes of request can
    #: cost a hundred of memory.
    max_bytes_elements: int = DEFAULT_MAX_BYTES_ELEMENTS

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits a :class:`sidecar.settings.SidecarSettings` sets."""
        return cls(
            settings.max_request_rows,
            settings.max_tensor_elements,
            settings.reject_non_finite,
            settings.max_bytes_elements,
        )


@dataclass(slots=True)
class Decoded:
    """A validated request: numpy inputs in signature order and what to answer."""

    arrays: dict[str, np.ndarray[Any, Any]]
    outputs: tuple[str, ...]
    #: The first dim the inputs that count rows share (``TensorSpec.per_row``); 1 when they
    #: disagree or there is none.
    rows: int
    key: tuple[Any, ...] | None
    request_id: str


def _bad(reason: str, message: str, **meta: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, metadata=meta)


def _check_parameters(params: Any, where: str, tensor: str | None = None) -> None:
    """Check the parameters of the request, or of the input or output ``tensor``
    (``where`` words which, for the messages)."""
    meta = {} if tensor is None else {"tensor": tensor}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise _bad(
                "INVALID_PARAMETER", f"parameter {key!r} of {where} carries no value", **meta
            )
        allowed = _PARAMETER_KINDS.get(key)
        if allowed is not None and choice not in allowed:
            raise _bad(
                "INVALID_PARAMETER",
                f"parameter {key!r} of {where} must be one of {', '.join(allowed)}, not {choice}",
                **meta,
            )
        if key in ("timeout", "priority") and value.int64_param < 0:
            raise _bad(
                "INVALID_PARAMETER",
                f"parameter {key!r} of {where} is {value.int64_param}; it is at least 0",
                **meta,
            )
        unsupported = _UNSUPPORTED.get(key)
        if unsupported is not None:
            raise _bad("UNSUPPORTED_PARAMETER", f"{where}: {unsupported.format(key=key)}", **meta)


def _element_count(spec: TensorSpec, shape: Any, limit: int) -> int:
    name = spec.name
    if len(shape) != spec.rank:
        raise _bad(
            "WRONG_SHAPE",
            f"input {name!r} has rank {len(shape)} (shape {list(shape)}); the model expects rank "
            f"{spec.rank} (shape {list(spec.shape)}, -1 = any size)",
            tensor=name,
        )
    # ``extent`` multiplies the non-zero dimensions: a zero must not hide the others from
    # the limit (numpy refuses to build some such shapes even with no elements).
    count = extent = 1
    for got, want in zip(shape, spec.shape, strict=True):
        if got < 0:
            raise _bad(
                "INVALID_SHAPE",
                f"input {name!r} has a negative dimension: {list(shape)}",
                tensor=name,
            )
        if want >= 0 and got != want:
            raise _bad(
                "WRONG_SHAPE",
                f"input {name!r} has shape {list(shape)}; the model expects {list(spec.shape)} "
                "(-1 = any size)",
                tensor=name,
            )
        count *= got
        extent *= got or 1
        if extent > limit:
            raise _bad(
                "TENSOR_TOO_LARGE",
                f"input {name!r} declares shape {list(shape)}, more than the {limit} elements "
                "a tensor may have",
                tensor=name,
            )
    return count


def _decode_bytes_raw(name: str, raw: bytes, count: int) -> np.ndarray[Any, Any]:
    if count * 4 > len(raw):
        raise _bad(
            "RAW_SIZE_MISMATCH",
            f"input {name!r}: {len(raw)} raw bytes cannot hold {count} length-prefixed elements",
            tensor=name,
        )
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    unpack = _LEN.unpack_from
    i = 0
    try:
        for i in range(count):
            if pos + 4 > end:
                raise _bad(
                    "BYTES_PREFIX_OVERRUN",
                    f"input {name!r}: raw data ends inside the length prefix of element {i}",
                    tensor=name,
                )
            (n,) = unpack(raw, pos)
            pos += 4
            if pos + n > end:
                raise _bad(
                    "BYTES_PREFIX_OVERRUN",
                    f"input {name!r}: element {i} declares {n} bytes, past the end of the raw data",
                    tensor=name,
                )
            out[i] = raw[pos : pos + n].decode("utf-8")
            pos += n
    except UnicodeDecodeError:
        raise _bad(
            "INVALID_UTF8", f"input {name!r}: element {i} is not UTF-8 text", tensor=name
        ) from None
    if pos != end:
        raise _bad(
            "RAW_SIZE_MISMATCH",
            f"input {name!r}: {end - pos} raw bytes left over after {count} elements",
            tensor=name,
        )
    return out


def _utf8(name: str, value: bytes, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(
            "INVALID_UTF8", f"input {name!r}: element {index} is not UTF-8 text", tensor=name
        ) from None


def _decode_raw(spec: TensorSpec, raw: bytes, count: int) -> np.ndarray[Any, Any]:
    if spec.datatype == "BYTES":
        return _decode_bytes_raw(spec.name, raw, count)
    wire = WIRE_DTYPES[spec.datatype]
    if len(raw) != count * wire.itemsize:
        raise _bad(
            "RAW_SIZE_MISMATCH",
            f"input {spec.name!r}: {len(raw)} raw bytes, but shape x {spec.datatype} needs "
            f"{count * wire.itemsize}",
            tensor=spec.name,
        )
    if spec.datatype == "BOOL":
        return np.frombuffer(raw, dtype=np.uint8) != 0
    return np.frombuffer(raw, dtype=wire)


def _decode_typed(spec: TensorSpec, contents: Any, count: int) -> np.ndarray[Any, Any]:
    name, datatype = spec.name, spec.datatype
    field = _TYPED_FIELD.get(datatype)
    if field is None:
        raise _bad(
            "TYPED_CONTENTS_UNSUPPORTED",
            f"input {name!r}: {datatype} has no typed contents field; send raw_input_contents",
            tensor=name,
        )
    for other in _ALL_TYPED_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise _bad(
                "WRONG_CONTENTS_FIELD",
                f"input {name!r} is {datatype}, so its elements belong in {field}, not {other}",
                tensor=name,
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise _bad(
            "CONTENTS_SIZE_MISMATCH",
            f"input {name!r}: {len(values)} elements in {field}, but its shape needs {count}",
            tensor=name,
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            out[i] = _utf8(name, v, i)
        return out
    wide: np.ndarray[Any, Any] = np.array(values, dtype=_FIELD_DTYPE[field])
    if wide.size == 0:
        return np.empty(0, dtype=spec.dtype)
    if datatype not in _FLOATS and datatype != "BOOL":
        info = np.iinfo(spec.dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise _bad(
                "VALUE_OUT_OF_RANGE",
                f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}",
                tensor=name,
            )
    return wide.astype(spec.dtype, copy=False)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], limits: Limits) -> int:
    """Every shape check of one input; returns its element count."""
    name = spec.name
    count = _element_count(spec, shape, limits.max_tensor_elements)
    if spec.rank:
        first = shape[0]
        if not spec.per_row:
            # A side input (keys beside queries): its first dim counts no rows of the request.
            return count
        if first == 0 and spec.batch_dynamic:
            raise _bad("EMPTY_BATCH", f"input {name!r} has no rows", tensor=name)
        if first > limits.max_request_rows:
            raise _bad(
                "BATCH_TOO_LARGE",
                f"input {name!r} has {first} rows; at most {limits.max_request_rows} are "
                "allowed per request",
                tensor=name,
            )
    return count


def _check_bytes_elements(inputs: Any, signature: Signature, limits: Limits) -> None:
    """Refuse a request whose BYTES inputs declare more elements in all than
    ``limits.max_bytes_elements``, from their shapes alone, before any input is decoded (each
    element becomes a Python string whatever its length). Shapes that are wrong otherwise
    are left to the shape checks, which word them."""
    limit = limits.max_bytes_elements
    total = 0
    for tensor in inputs:
        spec = signature.input(tensor.name)
        if spec is None or spec.datatype != "BYTES" or tensor.datatype != "BYTES":
            continue
        shape = tuple(tensor.shape[:])
        if any(d < 0 for d in shape):
            return
        total += math.prod(shape)
        if total > limit:
            raise _bad(
                "TENSOR_TOO_LARGE",
                f"input {tensor.name!r} declares shape {list(shape)}: the request's BYTES "
                f"inputs hold {total} elements, more than the {limit} a request may have "
                "(--max-bytes-elements)",
                tensor=tensor.name,
                limit=str(limit),
            )


def _rows_disagree(symbol: str, one: tuple[str, int], other: tuple[str, int]) -> InvalidArgument:
    """The refusal of inputs whose first dims the model names alike but that differ in size:
    ONNX Runtime would broadcast one over the other rather than fail."""
    return _bad(
        "ROW_COUNT_MISMATCH",
        f"input {one[0]!r} has {one[1]} rows and input {other[0]!r} has {other[1]}; the model "
        f"names both first dims {symbol!r}, so they must have the same number of rows",
        tensor=other[0],
        tensors=f"{one[0]},{other[0]}",
    )


def _decode_common(
    request: Any, inputs: Any, raws: Any, signature: Signature, limits: Limits
) -> Decoded | None:
    """The usual request with the fewest checks: one fixed-width numeric input as raw bytes,
    no parameters, every output. None when anything differs: the full path then decides
    (and words any error)."""
    spec = signature.inputs[0]
    tensor = inputs[0]
    name = tensor.name
    wire = WIRE_DTYPES.get(spec.datatype)
    if (
        name != spec.name
        or tensor.datatype != spec.datatype
        or wire is None
        or spec.datatype == "BOOL"
        or spec.tail is None
        or not spec.batch_dynamic
        or (limits.reject_non_finite and spec.datatype in _FLOATS)
    ):
        return None
    shape = tuple(tensor.shape[:])
    first = shape[0] if shape else 0
    count = first * spec.tail_size
    raw = raws[0]
    if (
        len(shape) != spec.rank
        or shape[1:] != spec.tail
        or not 0 < first <= limits.max_request_rows
        or count > limits.max_tensor_elements
        or len(raw) != count * wire.itemsize
        or request.parameters
        or request.outputs
        or tensor.parameters
        or tensor.HasField("contents")
    ):
        return None
    array = np.frombuffer(raw, dtype=wire).reshape(shape)
    return Decoded({name: array}, signature.output_names, first, ((name, shape[1:]),), request.id)


def decode(request: Any, signature: Signature, limits: Limits) -> Decoded:
    """Validate ``request`` against ``signature`` and return its inputs as numpy arrays."""
    inputs = request.inputs
    raws = request.raw_input_contents
    n_in = len(inputs)
    if n_in == 1 and len(raws) == 1 and len(signature.inputs) == 1:
        fast = _decode_common(request, inputs, raws, signature, limits)
        if fast is not None:
            return fast
    if request.parameters:
        _check_parameters(request.parameters, "the request")
    if raws and len(raws) != n_in:
        raise _bad(
            "RAW_CONTENTS_COUNT",
            f"{len(raws)} raw_input_contents entries for {n_in} inputs; send one per input, "
            "in the order of inputs",
        )
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    key: list[Any] = []
    rows = -1
    if signature.has_bytes:
        _check_bytes_elements(inputs, signature, limits)
    #: The first input of each named first dim (ONNX ``dim_param``), with its rows.
    firsts: dict[str, tuple[str, int]] = {}
    lookup = signature.input
    max_rows = limits.max_request_rows
    max_elements = limits.max_tensor_elements
    for i in range(n_in):
        tensor = inputs[i]
        name = tensor.name
        spec = lookup(name)
        if spec is None:
            expected = ", ".join(t.name for t in signature.inputs)
            raise _bad(
                "UNKNOWN_INPUT", f"unknown input {name!r}; the model takes {expected}", tensor=name
            )
        if name in arrays:
            raise _bad("DUPLICATE_INPUT", f"input {name!r} appears more than once", tensor=name)
        if tensor.datatype != spec.datatype:
            raise _bad(
                "WRONG_DATATYPE",
                f"input {name!r} is {tensor.datatype or '(empty)'}; the model takes "
                f"{spec.datatype}",
                tensor=name,
            )
        shape = tuple(tensor.shape[:])
        tail = spec.tail
        first = shape[0] if shape else 0
        count = first * spec.tail_size
        # The common case (rows of a fixed-width tensor, within the limits) needs one
        # comparison; anything else takes the full check, which also words the errors.
        if not (
            spec.batch_dynamic
            and tail is not None
            and len(shape) == spec.rank
            and shape[1:] == tail
            and 0 < first <= max_rows
            and count <= max_elements
        ):
            count = _check_shape(spec, shape, limits)
        if tensor.parameters:
            _check_parameters(tensor.parameters, f"input {name!r}", name)
        if spec.per_row:
            if rows == -1:
                rows = first
            elif rows != first:
                rows = -2
            symbol = spec.symbol(0) if spec.rank else None
            if symbol is not None and n_in > 1:
                seen = firsts.setdefault(symbol, (name, first))
                if seen[1] != first:
                    raise _rows_disagree(symbol, seen, (name, first))
        if raws:
            if tensor.HasField("contents"):
                raise _bad(
                    "BOTH_RAW_AND_TYPED",
                    f"input {name!r} has typed contents while the request uses "
                    "raw_input_contents; use one or the other",
                    tensor=name,
                )
            flat = _decode_raw(spec, raws[i], count)
        else:
            flat = _decode_typed(spec, tensor.contents, count)
        if limits.reject_non_finite and spec.datatype in _FLOATS and not np.isfinite(flat).all():
            raise _bad("NON_FINITE_VALUE", f"input {name!r} holds NaN or infinity", tensor=name)
        arrays[name] = flat.reshape(shape)
        key.append((name, shape[1:]))
    if n_in != len(signature.inputs):
        missing = [t.name for t in signature.inputs if t.name not in arrays]
        one = {"tensor": missing[0]} if len(missing) == 1 else {}
        raise _bad("MISSING_INPUT", f"missing input(s): {', '.join(missing)}", **one)
    outputs = requested_outputs(request, signature)
    batch_key = tuple(key) if rows >= 0 else None
    return Decoded(arrays, outputs, max(rows, 1), batch_key, request.id)


def requested_outputs(request: Any, signature: Signature) -> tuple[str, ...]:
    """The outputs ``request`` asks for (all when it names none), checked against
    ``signature``."""
    wanted = request.outputs
    if not wanted:
        return signature.output_names
    names: list[str] = []
    for out in wanted:
        name = out.name
        if signature.output(name) is None:
            offered = ", ".join(signature.output_names)
            raise _bad(
                "UNKNOWN_OUTPUT",
                f"unknown output {name!r}; the model offers {offered}",
                tensor=name,
            )
        if name in names:
            raise _bad(
                "DUPLICATE_OUTPUT", f"output {name!r} is requested more than once", tensor=name
            )
        if out.parameters:
            _check_parameters(out.parameters, f"output {name!r}", name)
        names.append(name)
    return tuple(names)
