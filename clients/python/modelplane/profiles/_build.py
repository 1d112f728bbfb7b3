"""Building a :class:`BaselineProfile` from a pyarrow Table."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelplane.errors import InvalidArgument
from modelplane.profiles._model import (
    BaselineProfile,
    CategoricalFeature,
    Feature,
    NumericFeature,
    finite_or_none,
    sorted_categories,
)
from modelplane.profiles._tables import check_unique_columns


def _invalid(message: str, feature: str | None = None) -> InvalidArgument:
    metadata = {"feature": feature} if feature is not None else None
    return InvalidArgument(message, reason="INVALID_DATASET", metadata=metadata)


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the ``1/bins .. (bins-1)/bins`` quantiles of ``values``.

    ``values`` must be finite. Quantiles use numpy's default (linear) method. Equal quantiles
    (ties, constant columns) collapse into one edge, so edges are strictly increasing and a
    constant column gets a single edge at its value. No values give no edges (one bin).
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if len(values) == 0 or bins == 1:
        return np.empty(0, dtype=np.float64)
    probs = np.arange(1, bins, dtype=np.float64) / bins
    with np.errstate(over="ignore"):
        span = np.max(values) - np.min(values)
    if np.isfinite(span):
        return np.unique(np.quantile(values, probs)).astype(np.float64)
    # Interpolating across a span wider than the largest float overflows to an infinite
    # edge; on halved values it cannot, and doubling the result back is exact.
    return np.unique(np.quantile(np.asarray(values) / 2, probs) * 2).astype(np.float64)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many ``values`` fall in each of the ``len(edges) + 1`` bins (right-closed edges)."""
    index = np.searchsorted(edges, values, side="right")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def is_categorical_type(type_: pa.DataType) -> bool:
    """Whether a column of this type is profiled as categorical."""
    return bool(
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_boolean(type_)
        or pa.types.is_dictionary(type_)
    )


def is_numeric_type(type_: pa.DataType) -> bool:
    """Whether a column of this type is profiled as numeric."""
    return bool(
        pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_)
    )


def default_feature_names(table: pa.Table, label: str | None = None) -> list[str]:
    """Every column of ``table`` except ``label``, in table order.

    Raises InvalidArgument when ``label`` is given but not a column of the table, or when
    the table repeats a column name.
    """
    check_unique_columns(table)
    names = list(table.column_names)
    if label:
        if label not in names:
            raise _invalid(f"label column {label!r} is not in the dataset (columns: {names})")
        names.remove(label)
    return names


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The column as float64 with nulls turned into NaN.

    The cast is unchecked: 64-bit integers beyond 2**53 (epoch nanoseconds, ids, uint64) and
    wide decimals round to the nearest float, a relative error under 2**-52 that quantiles,
    bins and moments do not notice.
    """
    as_float = pc.cast(column, pa.float64(), safe=False)
    return np.asarray(as_float.to_numpy(zero_copy_only=False), dtype=np.float64)


def _numeric_feature(
    name: str, column: pa.ChunkedArray, bins: int, sample_size: int, seed: int
) -> NumericFeature:
    raw = numeric_values(column)
    finite = raw[np.isfinite(raw)]
    n = len(finite)
    edges = quantile_edges(finite, bins)
    if n > sample_size:
        rng = np.random.default_rng(seed)
        sample = np.sort(finite[rng.choice(n, size=sample_size, replace=False)])
    else:
        sample = np.sort(finite)
    with np.errstate(over="ignore", invalid="ignore"):
        # Values near the largest float overflow the sums: such a mean or std is None.
        mean = finite_or_none(finite.mean()) if n else None
        std = finite_or_none(finite.std()) if n else None
    return NumericFeature(
        name=name,
        count=n,
        missing=len(raw) - n,
        min=finite_or_none(finite.min()) if n else None,
        max=finite_or_none(finite.max()) if n else None,
        mean=mean,
        std=std,
        edges=edges,
        bin_counts=bin_counts(finite, edges),
        sample=sample.astype(np.float64),
    )


def boolean_spelling(categories: Iterable[str]) -> tuple[str, str] | None:
    """How a categorical feature whose every category is a boolean word spells true and false
    (``("True", "False")`` for a column written by pandas), or None for any other feature.
    A feature that saw one of the two spells the other in the same letter case."""
    words = list(itertools.islice(categories, 3))
    if not 1 <= len(words) <= 2 or len({w.lower() for w in words}) != len(words):
        return None
    spelled = {w.lower(): w for w in words}
    if not spelled.keys() <= {"true", "false"}:
        return None
    for word, other in (("true", "false"), ("false", "true")):
        if word in spelled and other not in spelled:
            seen = spelled[word]
            spelled[other] = (
                other.upper() if seen.isupper() else other.title() if seen.istitle() else other
            )
    return spelled["true"], spelled["false"]


def category_strings(
    column: pa.ChunkedArray | pa.Array, booleans: tuple[str, str] | None = None
) -> pa.ChunkedArray | pa.Array:
    """A categorical column as strings, nulls kept. Booleans read ``true``/``false``, or
    ``booleans`` (true's and false's text: see :func:`boolean_spelling`), so that served
    booleans match a baseline that spelled them as text. Given ``booleans``, numbers 1 and 0
    read as true's and false's text too (a boolean served as a numeric 0/1 input); other
    numbers keep their own text."""
    if booleans is not None and pa.types.is_boolean(column.type):
        return pc.if_else(column, booleans[0], booleans[1])
    if booleans is not None and is_numeric_type(column.type):
        number = pc.cast(column, pa.float64(), safe=False)
        text = pc.cast(column, pa.string())
        return pc.if_else(
            pc.equal(number, 1.0),
            booleans[0],
            pc.if_else(pc.equal(number, 0.0), booleans[1], text),
        )
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    return column


def category_values(
    column: pa.ChunkedArray | pa.Array, booleans: tuple[str, str] | None = None
) -> pa.ChunkedArray | pa.Array:
    """A categorical feature's values as a profile and the drift monitor count them: the text
    of :func:`category_strings`, with an empty string a missing value (null) rather than a
    category, whatever the dataset's format (an empty CSV cell reads as null, and a CSV cannot
    tell an empty text from none) and in served inputs alike."""
    strings = category_strings(column, booleans)
    return pc.if_else(pc.equal(strings, ""), pa.scalar(None, strings.type), strings)


def _categorical_feature(name: str, column: pa.ChunkedArray) -> CategoricalFeature:
    strings = category_values(column)
    missing = strings.null_count
    counts = pc.value_counts(pc.drop_null(strings))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return CategoricalFeature(
        name=name,
        count=len(strings) - missing,
        missing=missing,
        categories=sorted_categories(list(pairs)),
    )


def build_profile(
    table: pa.Table,
    feature_names: Sequence[str],
    *,
    bins: int = 10,
    sample_size: int = 10_000,
    seed: int = 0,
) -> BaselineProfile:
    """Profile ``feature_names`` of ``table`` (all columns when empty; see
    :func:`default_feature_names` to leave a label out).

    Numeric columns (integer, floating, decimal) get quantile bin edges and counts, a sorted
    reference sample of at most ``sample_size`` finite values drawn uniformly without
    replacement with ``seed`` (every finite value when there are no more than that), and
    count, missing, min, max, mean and std; a column of type null (no values at all) is
    numeric with every row missing. String, boolean and dictionary columns get category
    counts. Other column types, unknown or repeated names, and a table that repeats
    a column name raise ``InvalidArgument(reason="INVALID_DATASET")``.
    """
    if bins < 1:
        raise InvalidArgument("bins must be at least 1", reason="INVALID_ARGUMENT")
    if sample_size < 1:
        raise InvalidArgument("sample_size must be at least 1", reason="INVALID_ARGUMENT")
    check_unique_columns(table)
    # Read once: pyarrow builds a new list on every access of ``column_names``, which per
    # feature would make a wide table's profile quadratic in its column count.
    columns = table.column_names
    present = set(columns)
    names = list(feature_names) or list(columns)
    if len(set(names)) != len(names):
        raise _invalid(f"feature names repeat: {names}")
    features: list[Feature] = []
    for name in names:
        if name not in present:
            raise _invalid(
                f"feature {name!r} is not a column of the dataset (columns: {columns})", name
            )
        column = table.column(name)
        # A column with no value at all has type null (a CSV column of empty or NaN cells
        # reads so): profiled as numeric with every row missing, as the same data stored as
        # float64 would be.
        if is_numeric_type(column.type) or pa.types.is_null(column.type):
            features.append(_numeric_feature(name, column, bins, sample_size, seed))
        elif is_categorical_type(column.type):
            features.append(_categorical_feature(name, column))
        else:
            raise _invalid(
                f"feature {name!r} has type {column.type}, which is neither numeric "
                "(integer, floating, decimal) nor categorical (string, boolean, dictionary)",
                name,
            )
    return BaselineProfile(
        row_count=table.num_rows,
        features=tuple(features),
        bins=bins,
        sample_size=sample_size,
        seed=seed,
    )
