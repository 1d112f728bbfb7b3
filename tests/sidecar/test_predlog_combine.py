"""Combining a round's batches for one file keeps every row, also where a binary column passes
Arrow's 2 GiB per array and Arrow has to split it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sidecar.predlog.schemas import combine


def test_small_batches_combine_into_one() -> None:
    schema = pa.schema([("v", pa.binary()), ("i", pa.int64())])
    parts = [
        pa.record_batch([pa.array([b"x" * i]), pa.array([i])], schema=schema) for i in range(3)
    ]
    (combined,) = combine(parts, schema)
    assert combined.column("i").to_pylist() == [0, 1, 2]


@pytest.mark.slow
def test_batches_past_two_gib_of_binary_keep_every_row() -> None:
    size = (1 << 30) + 1
    # One value of just over 1 GiB, backed by a buffer that is never filled: two of them
    # pass the 2 GiB a binary array can hold.
    value = pa.Array.from_buffers(
        pa.binary(),
        1,
        [None, pa.py_buffer(np.array([0, size], np.int32).tobytes()), pa.allocate_buffer(size)],
    )
    schema = pa.schema([("v", pa.binary()), ("i", pa.int64())])
    parts = [pa.record_batch([value, pa.array([i])], schema=schema) for i in range(2)]
    combined = combine(parts, schema)
    assert len(combined) == 2
    assert [b.column("i").to_pylist() for b in combined] == [[0], [1]]
    assert [pa.compute.binary_length(b.column("v")).to_pylist() for b in combined] == [
        [size],
        [size],
    ]
