"""Writing prediction records out for `modelplane logs read`: columns CSV can hold, and --out
files that appear only once complete. pyarrow is imported by the functions that need it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from modelplane.cli._output import dumps
from modelplane.files import replaced_atomically


def for_csv(table: Any) -> Any:
    """``table`` with only columns CSV can hold.

    Lists are split into ``name[0]``, ``name[1]``, ... (lists of varying length, such as an
    output whose width changed between model versions, get as many columns as the longest
    and empty cells where shorter); binary values are written as hex (BYTES inputs need not
    be UTF-8); other nested values as JSON text.
    """
    import pyarrow as pa

    names: list[str] = []
    columns: list[Any] = []
    for field, column in zip(table.schema, table.columns, strict=True):
        for name, cells in _cells(field.name, column):
            names.append(name)
            columns.append(cells)
    return pa.table(columns, names=names)


def _cells(name: str, column: Any) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if _is_list(kind) and not pa.types.is_nested(kind.value_type):
        if not pa.types.is_fixed_size_list(kind):
            width = pc.max(pc.list_value_length(column)).as_py() or 0
            column = pc.list_slice(column, 0, width, return_fixed_size_list=True)
        cells: list[tuple[str, Any]] = []
        for j in range(column.type.list_size):
            cells.extend(_cells(f"{name}[{j}]", pc.list_element(column, j)))
        return cells
    if _is_binary(kind):
        text = [None if v is None else v.hex() for v in column.to_pylist()]
        return [(name, pa.array(text, pa.string()))]
    if pa.types.is_nested(kind):
        text = [None if v is None else dumps(v) for v in column.to_pylist()]
        return [(name, pa.array(text, pa.string()))]
    return [(name, column)]


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
    )


def _is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )


def write_out(out: str, write: Callable[[BinaryIO], object]) -> None:
    """Write the file ``out`` with ``write`` so that it appears only once complete (see
    :func:`modelplane.files.replaced_atomically`; ``/dev/stdout`` or a pipe is written
    directly)."""
    with replaced_atomically(out) as fh:
        write(fh)
