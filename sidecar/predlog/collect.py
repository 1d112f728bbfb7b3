"""The log as one table (:func:`read_logs`): read in chunks of bounded size, only the columns
asked for, stopping at a limit, and merging model versions' columns only where no value
changes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from sidecar.predlog.reader import BASE_SCHEMA, LogFilter, TimeLike, file_schema, iter_log_batches
from sidecar.predlog.schemas import conform, unify

#: Matching batches of one schema are copied into one chunk once this many rows, or this many
#: batches, are pending: a sidecar answering about one request a second writes one-row
#: batches, and each batch kept as read costs about 10 KB besides its rows.
CHUNK_ROWS = 65_536
CHUNK_BATCHES = 1_024

#: A model name and version, as records carry them (either may be null).
Model = tuple[str | None, str | None]


def read_logs(
    directory: str | os.PathLike[str],
    since: TimeLike = None,
    until: TimeLike = None,
    model_version: str | None = None,
    arm: str | None = None,
    *,
    model_name: str | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    widen_float16: bool = False,
    failed: bool = False,
) -> pa.Table:
    """Every record under ``directory`` in ``[since, until)``, optionally of one model name,
    version and arm (a folder holding several sidecars' log dirs may hold several models,
    each with a version ``1``), and with ``failed`` only those whose ``status_code`` is not
    ``OK``: requests refused, shed or failed, and shadow copies the candidate failed (arm
    ``shadow``), with their features as far as they decoded.

    Times are datetimes (naive means UTC) or strings for :func:`parse_time` (digits past
    microseconds, the log's precision, round up: the window stays exact). ``columns`` keeps
    only those columns, in that order (a column no file has raises ``ValueError``; one only
    other records have is null); ``limit`` keeps the first records that match every filter
    and stops reading there;
    ``widen_float16`` turns float16 values, which DuckDB cannot read, into float32.

    Files written by different model versions may have different feature columns: the result
    has them all, null where a file lacks them. A column whose types differ is widened where
    every value stays exact (float32 to float64, int32 to int64); other differences (int64
    and float32, a scalar and a list) raise ``ValueError`` naming the column, its types and
    the models and versions that logged each. Files still being written are read up to their
    last complete batch; so are files torn by a crash or a failed write, with a
    :class:`TornLogFile` warning naming each; a damaged file raises :class:`DamagedLogFile`.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    log_filter = LogFilter(since, until, model_version, arm, model_name=model_name, failed=failed)
    path = Path(directory)
    fields = None
    wanted = None if columns is None else list(dict.fromkeys(columns))
    if wanted is not None:
        fields = log_fields(path)
        unknown = [c for c in wanted if c not in fields]
        if unknown:
            have = ", ".join(fields)
            raise ValueError(f"no column {', '.join(unknown)} in the log; it has {have}")
    gathered = _Chunks(wanted, widen_float16)
    if limit != 0:
        batches = iter_log_batches(path, log_filter)
        try:
            for batch in batches:
                if limit is not None and gathered.rows + batch.num_rows >= limit:
                    gathered.add(batch.slice(0, limit - gathered.rows))
                    break
                gathered.add(batch)
        finally:
            batches.close()  # unmaps the file being read
    table = gathered.table(fields)
    return table if table is not None else _empty_result(path, wanted, widen_float16, fields)


class _Chunks:
    """Matching batches kept as chunks of bounded count, their schemas merged as they come."""

    def __init__(self, columns: list[str] | None, widen_float16: bool) -> None:
        self.columns = columns
        self.widen_float16 = widen_float16
        self.rows = 0
        self.chunks: list[pa.RecordBatch] = []
        self.schema: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        #: Each column's types, and the (model name, version) pairs whose records have each.
        self._types: dict[str, dict[pa.DataType, set[Model]]] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        if self._pending and not batch.schema.equals(self._pending[0].schema):
            self._flush()
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= CHUNK_ROWS or len(self._pending) >= CHUNK_BATCHES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        run = pa.Table.from_batches(self._pending)
        self._pending, self._pending_rows = [], 0
        keys = ["model_name", "model_version"]
        pairs = run.select(keys).group_by(keys, use_threads=False).aggregate([])
        models = set(zip(*(pairs.column(k).to_pylist() for k in keys), strict=True))
        if self.columns is not None:
            run = run.select([c for c in self.columns if c in run.column_names])
        if self.widen_float16:
            run = run.cast(widened(run.schema))
        self._merge(run.schema, models)
        # One copy of the rows: the batches' many small arrays go, and so does the file's
        # mapping once its last batch is copied.
        self.chunks.extend(run.combine_chunks().to_batches())

    def _merge(self, schema: pa.Schema, models: set[Model]) -> None:
        for field in schema:
            self._types.setdefault(field.name, {}).setdefault(field.type, set()).update(models)
        merged = schema if self.schema is None else unify([self.schema, schema])
        if merged is None:
            assert self.schema is not None
            raise ValueError(self._conflict(self.schema, schema))
        self.schema = merged

    def _conflict(self, merged: pa.Schema, schema: pa.Schema) -> str:
        clashes, groups = [], []
        for field in schema:
            index = merged.get_field_index(field.name)
            pair = [pa.schema([merged.field(index)]), pa.schema([field])] if index >= 0 else []
            if not pair or unify(pair) is not None:
                continue
            kinds = self._types[field.name]
            groups.append(list(kinds.values()))
            several = len({name for models in kinds.values() for name, _ in models}) > 1
            described = " and ".join(
                f"{_type_name(kind)} ({_models(models, several)})" for kind, models in kinds.items()
            )
            clashes.append(f"column {field.name!r} is {described}")
        return (
            f"{'; '.join(clashes)}, types that do not merge without changing values: "
            f"{_advice(groups)} or leave the column out (--columns)"
        )

    def table(self, fields: dict[str, pa.Field] | None) -> pa.Table | None:
        """The chunks as one table with the merged schema (None without any)."""
        self._flush()
        if self.schema is None:
            return None
        schema = self.schema
        if self.columns is not None and fields is not None:
            # A column asked for that no matching record has is null, typed as in the files.
            chosen = [schema.field(c) if c in schema.names else fields[c] for c in self.columns]
            schema = pa.schema(chosen, metadata=schema.metadata)
            schema = widened(schema) if self.widen_float16 else schema
        return pa.Table.from_batches([conform(c, schema) for c in self.chunks], schema)


def _type_name(kind: pa.DataType) -> str:
    """Arrow's name for a type, float widths spelt out (``float32``, not ``float``)."""
    if pa.types.is_floating(kind):
        return f"float{kind.bit_width}"
    return str(kind)


def _text(value: str | None) -> str:
    return "(none)" if value is None else value


def _either(choices: Iterable[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    named = sorted(set(choices))
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"


def _models(models: Iterable[Model], with_names: bool) -> str:
    """``model version 1, 2``, or with names ``model churn version 1; model fraud version 1``."""
    by_name: dict[str, list[str]] = {}
    for name, version in models:
        by_name.setdefault(_text(name), []).append(_text(version))
    described = []
    for name, versions in sorted(by_name.items()):
        listed = f"version{'s' if len(versions) > 1 else ''} {', '.join(sorted(versions))}"
        described.append(f"model {name} {listed}" if with_names else f"model {listed}")
    return "; ".join(described)


def _advice(groups: list[list[set[Model]]]) -> str:
    """Which filter reads the clashing records apart: for each clashing column, the models
    whose records have each of its types (``groups``)."""

    def separates(key: Callable[[Model], str]) -> bool:
        for kinds in groups:
            keys = [{key(m) for m in models} for models in kinds]
            if any(a & b for i, a in enumerate(keys) for b in keys[i + 1 :]):
                return False
        return True

    involved = {m for kinds in groups for models in kinds for m in models}
    names = _either(_text(n) for n, _ in involved)
    versions = _either(_text(v) for _, v in involved)
    pairs = _either(f"{_text(n)} {_text(v)}" for n, v in involved)
    if separates(lambda m: _text(m[1])):
        return f"read one model version at a time (--model-version V: {versions})"
    if separates(lambda m: _text(m[0])):
        return f"read one model at a time (--model-name N: {names})"
    if separates(lambda m: f"{_text(m[0])} {_text(m[1])}"):
        return f"read one model version at a time (--model-name N --model-version V: {pairs})"
    return (
        "one model version logged both (a model changed without a new --model-version): "
        "read the records before and after the change apart (--since, --until)"
    )


def widened(schema: pa.Schema) -> pa.Schema:
    """``schema`` with float16 values, lists' included, as float32."""
    return pa.schema([f.with_type(_widen(f.type)) for f in schema], metadata=schema.metadata)


def _widen(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_widen(kind.value_type)), kind.list_size)
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_widen(kind.value_type)))
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_widen(kind.value_type)))
    return kind


def log_fields(directory: Path) -> dict[str, pa.Field]:
    """The columns of every file under ``directory``, by name (the first file's type where
    types conflict)."""
    fields: dict[str, pa.Field] = {f.name: f for f in BASE_SCHEMA}
    schemas = [s for s in map(file_schema, LogFilter().files(directory)) if s is not None]
    merged = unify(schemas) if schemas else None
    for schema in [merged] if merged is not None else schemas:
        for f in schema:
            fields.setdefault(f.name, f)
    return fields


def _empty_result(
    directory: Path,
    columns: list[str] | None,
    widen_float16: bool,
    fields: dict[str, pa.Field] | None,
) -> pa.Table:
    """No records, with the columns of every file under ``directory`` (or those asked for),
    so a window without records still names the log's columns."""
    fields = log_fields(directory) if fields is None else fields
    chosen = list(fields.values()) if columns is None else [fields[c] for c in columns]
    schema = pa.schema(chosen)
    return (widened(schema) if widen_float16 else schema).empty_table()
