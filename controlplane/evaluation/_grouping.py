"""Splitting rows into groups by the values of a column (slices and protected attributes).

A group's name is the value's string form: strings as they are, booleans ``true``/``false``,
numbers as pyarrow prints them (``3``, ``2.5``), with ``-0.0`` and ``0.0`` both ``0``; missing
values (null, and NaN in a float column, dictionary-encoded or not) form the group ``<null>``.
A value spelled like a reserved group name (``<null>``, ``<other>``) is shown in double quotes,
so it never merges with that group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelplane.profiles import category_strings, is_categorical_type, is_numeric_type

NULL_GROUP = "<null>"
OTHER_GROUP = "<other>"


@dataclass(frozen=True)
class Groups:
    """Rows split into named groups: ``rows[i]`` are the row indices of ``names[i]``."""

    names: list[str]
    rows: list[np.ndarray]


def _as_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_null(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_dictionary(column.type) and pa.types.is_floating(column.type.value_type):
        column = pc.cast(column, column.type.value_type)
    if is_categorical_type(column.type):
        strings = category_strings(column)
        for reserved in (NULL_GROUP, OTHER_GROUP):
            strings = pc.if_else(pc.equal(strings, reserved), f'"{reserved}"', strings)
        return strings
    if pa.types.is_floating(column.type):
        values = column.to_numpy()
        # Adding +0.0 turns -0.0 into 0.0 and leaves every other value as it is.
        column = pa.chunked_array([pa.array(values + values.dtype.type(0), mask=np.isnan(values))])
    if is_numeric_type(column.type) or (
        pa.types.is_temporal(column.type) and not pa.types.is_interval(column.type)
    ):
        try:
            return pc.cast(column, pa.string())
        except pa.ArrowNotImplementedError:
            pass
    raise TypeError(f"type {column.type} cannot be grouped")


def group_rows(column: pa.ChunkedArray) -> Groups:
    """Every distinct value of ``column`` (nulls as :data:`NULL_GROUP`) and its rows, ordered by
    value name. Raises TypeError for nested, binary and interval columns (any a value of which
    has no string form)."""
    strings = pc.fill_null(_as_strings(column), NULL_GROUP)
    encoded = pc.dictionary_encode(strings).combine_chunks()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
    rows = np.split(order, bounds)
    pairs = sorted(zip(names, rows, strict=True), key=lambda p: p[0])
    return Groups([p[0] for p in pairs], [p[1] for p in pairs])


def cap_groups(groups: Groups, limit: int) -> tuple[Groups, int]:
    """Keep the ``limit - 1`` largest groups and pool the rest into :data:`OTHER_GROUP` when
    there are more than ``limit``; returns the groups and how many were pooled (0 if none).

    Ties in size keep the group whose name sorts first.
    """
    if len(groups.names) <= limit:
        return groups, 0
    by_size = sorted(
        range(len(groups.names)), key=lambda i: (-len(groups.rows[i]), groups.names[i])
    )
    kept = sorted(by_size[: limit - 1], key=lambda i: groups.names[i])
    pooled = by_size[limit - 1 :]
    names = [groups.names[i] for i in kept] + [OTHER_GROUP]
    rows = [groups.rows[i] for i in kept]
    rows.append(np.sort(np.concatenate([groups.rows[i] for i in pooled])))
    return Groups(names, rows), len(pooled)
