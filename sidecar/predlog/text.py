"""Text the log can store: Arrow strings are UTF-8, but a Python string may hold a lone
surrogate (a JSON ``"\\udcff"`` escape, bytes decoded with ``surrogateescape``) that UTF-8
cannot encode. Such characters are kept as their backslash escape (``\\udcff``), on the
caller's thread, so the writer thread never meets them and every record is still written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sidecar.predlog.records import Array, PredictionBatch

_NOT_TEXT = frozenset({int, float, bool, bytes, np.float64, np.float32, np.int64})
_TEXT_FIELDS = (
    "model_name",
    "model_version",
    "request_ids",
    "trace_ids",
    "status_reasons",
    "status_messages",
)


def utf8_safe(text: str) -> str:
    """``text`` with the characters UTF-8 cannot encode written as backslash escapes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _encodes(joined: str) -> bool:
    # UTF-8 encodes code point by code point: joined texts encode iff every part does.
    if joined.isascii():
        return True
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _joined(values: Any) -> str:
    try:
        return "".join(values)
    except TypeError:  # None or other values among the strings
        return "".join([v for v in values if isinstance(v, str)])


def safe_values(value: Any) -> Any:
    """A string, or a sequence or array of optional strings, with every string made
    :func:`utf8_safe`; ``value`` itself when nothing needed changing."""
    kind = type(value)
    if kind is str:
        return utf8_safe(value)
    if value is None or kind in _NOT_TEXT:
        return value
    if kind is not list and kind is not tuple:
        if isinstance(value, str):
            return utf8_safe(value)
        if isinstance(value, np.ndarray):
            return safe_array(value)
        if not isinstance(value, Sequence) or isinstance(value, bytes):
            return value
    if _encodes(_joined(value)):
        return value
    return [utf8_safe(v) if isinstance(v, str) else v for v in value]


def safe_array(arr: Array) -> Array:
    """A tensor whose strings (object or unicode arrays) are all :func:`utf8_safe`; ``arr``
    itself when nothing needed changing, else an object-array copy."""
    if arr.dtype.kind not in "OU":
        return arr
    items = arr.ravel().tolist()
    if _encodes(_joined(items)):
        return arr
    cleaned = np.empty(len(items), dtype=object)
    cleaned[:] = [utf8_safe(v) if isinstance(v, str) else v for v in items]
    return cleaned.reshape(arr.shape)


def _safe_arrays(arrays: Mapping[str, Array]) -> Mapping[str, Array]:
    cleaned: dict[str, Array] | None = None
    for name, arr in arrays.items():
        if arr.dtype.kind not in "OU":
            continue
        safe = safe_array(arr)
        if safe is not arr:
            cleaned = cleaned if cleaned is not None else dict(arrays)
            cleaned[name] = safe
    return arrays if cleaned is None else cleaned


def safe_batch(batch: PredictionBatch) -> PredictionBatch:
    """``batch`` with every string it logs made :func:`utf8_safe`: a copy when one changed,
    so the caller's batch and arrays are never modified."""
    changes: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(batch, name)
        safe = safe_values(value)
        if safe is not value:
            changes[name] = safe
    for name in ("inputs", "outputs"):
        arrays = getattr(batch, name)
        safe = _safe_arrays(arrays)
        if safe is not arrays:
            changes[name] = safe
    return dataclasses.replace(batch, **changes) if changes else batch
