"""Numbers carried as text: a numeric feature fed by a BYTES (string) input.

A model's text input may carry numbers ("3", "0.25") where the baseline profiled that column as
numeric (a CSV column of small integers). Each value is read as Python's ``float`` reads it
(surrounding whitespace allowed); a value that is no number ("7x", "") becomes NaN, which the
monitor counts as missing for that feature alone, so one odd value never costs the other
values or rows of its batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def text_numbers(values: Any) -> np.ndarray:
    """``values`` (an array of bytes or str, any shape; None allowed) as float64 of the same
    shape, with NaN where a value does not read as a number."""
    try:
        # numpy reads each object with float(): all at once when every value is a number.
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    objects = np.asarray(values, dtype=object)
    out = np.fromiter((_number(v) for v in objects.flat), np.float64, count=objects.size)
    return out.reshape(objects.shape)


def is_text_type(type_: pa.DataType) -> bool:
    """Whether an Arrow column of this type holds text (string or binary values)."""
    return bool(
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_string_view(type_)
        or pa.types.is_binary_view(type_)
    )
