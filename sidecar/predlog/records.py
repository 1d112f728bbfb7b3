"""What the server hands the prediction log: one completed batch, or one rejected request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The traffic arms a record may belong to (``champion`` in standalone mode).
ARMS = ("champion", "candidate", "shadow")

_GRPC_CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

Array = np.ndarray[Any, Any]
FeatureNames = Sequence[str] | Mapping[str, Sequence[str]] | None


def status_code_name(code: object) -> str:
    """The gRPC status name of ``code``: an int, a name, or a ``grpc.StatusCode``."""
    name = getattr(code, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(code, bool):
        raise ValueError(f"status code {code!r} is not a gRPC status code")
    if isinstance(code, int | np.integer):
        if 0 <= int(code) < len(_GRPC_CODE_NAMES):
            return _GRPC_CODE_NAMES[int(code)]
        raise ValueError(f"status code {code!r} is not a gRPC status code (0..16)")
    if isinstance(code, str) and code.upper() in _GRPC_CODE_NAMES:
        return code.upper()
    raise ValueError(f"status code {code!r} is not a gRPC status name like OK or INTERNAL")


@dataclass(slots=True)
class PredictionBatch:
    """The requests of one session call, logged together: one record per row.

    Every array in ``inputs`` and ``outputs`` stacks the rows of all requests in order:
    ``row_counts[i]`` rows belong to ``request_ids[i]``. Per-request fields (``trace_ids``,
    ``latencies_s``, ``timestamps``, ``status_codes``, ``status_reasons``) are sequences of
    the same length as ``request_ids``; a scalar applies to every request. The log keeps
    references to the arrays until written, so callers must not modify them afterwards.
    """

    model_name: str
    model_version: str
    request_ids: Sequence[str]
    row_counts: Sequence[int] | Array
    inputs: Mapping[str, Array]
    outputs: Mapping[str, Array] = field(default_factory=dict)
    latencies_s: Sequence[float] | Array | float | None = None
    trace_ids: Sequence[str | None] | str | None = None
    arm: str = "champion"
    #: Unix seconds when each request arrived; the append time when unset.
    timestamps: Sequence[float] | Array | float | None = None
    #: Rows in the session call (one value, or one per request when the batch gathers the
    #: requests of several calls); the sum of ``row_counts`` when unset.
    batch_size: int | Sequence[int] | Array | None = None
    status_codes: Sequence[object] | object = "OK"
    status_reasons: Sequence[str | None] | str | None = None
    status_messages: Sequence[str | None] | str | None = None
    #: Column names of tabular ``[-1, F]`` inputs: a list for the model's only 2-D input,
    #: or a mapping from input name to its names. ``x_0..x_{F-1}`` when unset.
    feature_names: FeatureNames = None
    #: The model's declared shape of each output as a row holds it (-1 where a dim varies):
    #: an output's column then holds plain values only when its declaration says one value
    #: per row (``[]`` or ``[1]``), and lists otherwise, whatever the arrays of this batch,
    #: so that every batch of a model version has the same column types. Unset (or an
    #: output it does not name): the arrays decide.
    output_shapes: Mapping[str, Sequence[int]] | None = None


@dataclass(slots=True)
class RejectedRequest:
    """A request refused before or while running, with its inputs as far as decoded.

    ``inputs`` holds the tensors that could be decoded (possibly none). When they agree on a
    row count ``N``, the log keeps one record per row (sharing the request id and status);
    otherwise one record with null features.
    """

    request_id: str
    status_code: object
    reason: str
    message: str = ""
    model_name: str = ""
    model_version: str = ""
    arm: str = "champion"
    trace_id: str | None = None
    inputs: Mapping[str, Array] = field(default_factory=dict)
    latency_s: float | None = None
    #: Unix seconds when the request arrived; the append time when unset.
    timestamp: float | None = None
    feature_names: FeatureNames = None
