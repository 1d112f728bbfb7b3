"""Reconciling record schemas: files differ when models, versions or rejected inputs differ."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def unify(schemas: Sequence[pa.Schema]) -> pa.Schema | None:
    """One schema holding every field (types promoted), or None when types conflict."""
    if len(schemas) == 1:
        return schemas[0]
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def covers(schema: pa.Schema, part: pa.Schema) -> bool:
    """Whether every field of ``part`` is in ``schema`` with the same type."""
    if schema.equals(part):
        return True
    for field in part:
        index = schema.get_field_index(field.name)
        if index < 0 or not schema.field(index).type.equals(field.type):
            return False
    return True


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema``'s columns in its order: missing ones null, others cast."""
    if batch.schema.equals(schema):
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        columns.append(column if column.type.equals(field.type) else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def combine(batches: Sequence[pa.RecordBatch], schema: pa.Schema) -> list[pa.RecordBatch]:
    """Batches of one schema as contiguous batches: one, unless a string or binary column
    would pass Arrow's 2 GiB per array, where Arrow splits it and every part is returned."""
    if len(batches) == 1:
        return [batches[0]]
    table = pa.Table.from_batches(list(batches), schema=schema).combine_chunks()
    return table.to_batches()
