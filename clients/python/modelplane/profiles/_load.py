"""Loading a baseline from a file that holds either a profile or the data itself."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa

from modelplane.errors import InvalidArgument
from modelplane.profiles._build import build_profile, default_feature_names
from modelplane.profiles._model import BaselineProfile
from modelplane.profiles._tables import detect_format, read_table


def is_profile(data: bytes) -> bool:
    """Whether ``data`` holds a JSON object, the form of a serialised :class:`BaselineProfile`.

    No supported dataset format starts with ``{``; :meth:`BaselineProfile.from_bytes` then
    checks the format field.
    """
    return data.lstrip()[:1] == b"{"


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise InvalidArgument(
            f"cannot read baseline file {os.fspath(path)!r}: {err.strerror}",
            reason="INVALID_DATASET",
        ) from err


def load_baseline(
    source: bytes | str | os.PathLike[str],
    feature_names: Sequence[str] | None = None,
    label: str | None = None,
    *,
    bins: int = 10,
    sample_size: int = 10_000,
    seed: int = 0,
) -> BaselineProfile:
    """A profile from ``source`` (bytes or a file path) holding a profile or a dataset.

    A serialised profile is parsed as is. A dataset (Parquet, Arrow IPC, CSV) is profiled on
    ``feature_names``, or on every column but ``label`` when no names are given; a CSV is read
    with ``text_booleans`` (see :func:`read_table`), so ``True``/``False`` text stays a
    category spelled as in the file.
    """
    data = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else None
    if data is None:
        data = _read_bytes(source)  # type: ignore[arg-type]
    if is_profile(data):
        return BaselineProfile.from_bytes(data)
    table = profiling_table(data)
    names = list(feature_names or []) or default_feature_names(table, label)
    return build_profile(table, names, bins=bins, sample_size=sample_size, seed=seed)


def profiling_table(data: bytes, read: pa.Table | None = None) -> pa.Table:
    """The table a profile of the dataset ``data`` summarises: a CSV read with
    ``text_booleans`` (see :func:`read_table`), so that ``True``/``False`` text stays a
    category spelled as in the file, which served strings carrying that text match (served
    booleans take the same spelling: see :func:`boolean_spelling`). ``read`` is ``data``
    already read with the default options, kept for every other format."""
    if read is not None and detect_format(data) != "csv":
        return read
    return read_table(data, text_booleans=True)


def profile_from_file(
    path: str | os.PathLike[str],
    feature_names: Sequence[str] | None = None,
    label: str | None = None,
    *,
    bins: int = 10,
    sample_size: int = 10_000,
    seed: int = 0,
) -> BaselineProfile:
    """A profile from the file at ``path``: a profile file, or a dataset to profile.

    Same rules as :func:`load_baseline`; this is what the sidecar's ``--baseline FILE`` uses.
    """
    return load_baseline(path, feature_names, label, bins=bins, sample_size=sample_size, seed=seed)
