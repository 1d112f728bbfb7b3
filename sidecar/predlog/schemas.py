"""Reconciling record schemas: files differ when models, versions or rejected inputs differ."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def unify(schemas: Sequence[pa.Schema]) -> pa.Schema | None:
    """One schema holding every field (types widened), or None when types conflict.

    Only widenings that keep every value exact count (float32 to float64, int32 to int64 or
    float64, string to large_string): :func:`conform` casts each batch to the merged schema
    with a checked cast, and Arrow's permissive promotion also merges int64 with float64
    (rounding above 2**53) and int64 with uint64 (failing above 2**63). Such schemas stay
    apart, each in its own file, so no value is rounded and no cast can fail on the writer
    thread, which would stop the log.
    """
    if len(schemas) == 1:
        return schemas[0]
    try:
        merged = pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    for schema in schemas:
        for field in schema:
            if not _exact(field.type, merged.field(field.name).type):
                return None
    return merged


#: Bits of an integer's magnitude a float holds exactly, by the float's width.
_FLOAT_PRECISION = {16: 11, 32: 24, 64: 53}
#: Text and byte types that take every value of another unchanged (UTF-8 is bytes).
_EXACT_BYTES = {
    (pa.string(), pa.large_string()),
    (pa.string(), pa.binary()),
    (pa.string(), pa.large_binary()),
    (pa.large_string(), pa.large_binary()),
    (pa.binary(), pa.large_binary()),
}


def _exact(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` casts to ``target`` unchanged."""
    if source.equals(target) or pa.types.is_null(source):
        return True
    if pa.types.is_integer(source):
        signed = pa.types.is_signed_integer(source)
        if pa.types.is_integer(target):
            if signed and not pa.types.is_signed_integer(target):
                return False
            sign_bit = int(not signed and pa.types.is_signed_integer(target))
            return bool(target.bit_width >= source.bit_width + sign_bit)
        if pa.types.is_floating(target):
            return _FLOAT_PRECISION[target.bit_width] >= source.bit_width - int(signed)
        return False
    if pa.types.is_floating(source):
        return pa.types.is_floating(target) and target.bit_width >= source.bit_width
    if (source, target) in _EXACT_BYTES:
        return True
    if _is_list(source) and _is_list(target):
        if pa.types.is_fixed_size_list(target) and not (
            pa.types.is_fixed_size_list(source) and source.list_size == target.list_size
        ):
            return False
        return _exact(source.value_type, target.value_type)
    return False


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


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
