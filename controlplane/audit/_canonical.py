"""Canonical JSON and the digests of the audit trail.

The encoding is JSON with sorted keys, no whitespace and UTF-8 text, after reducing values to
JSON types: dataclasses become objects of their fields, datetimes ISO 8601 text in UTC with
microseconds (naive ones are taken as UTC), dates ISO text, timedeltas seconds, enums their
value, bytes base64 text, sets sorted lists, non-finite floats their name. Any other type is
refused, so that a digest always means the same bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any

#: The ``prev_hash`` of the first event.
GENESIS_HASH = "0" * 64


def utc_text(value: datetime) -> str:
    """``2026-11-26T10:00:00.000000Z``: one spelling per instant."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Field names of the dataclasses met so far (``dataclasses.fields`` is slow to call per value).
_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def plain(value: Any) -> Any:
    """``value`` reduced to JSON types, as the module docstring describes."""
    # Fast paths by exact type for what domain objects are made of; every other type (and any
    # subclass) takes the general path below, which gives the same result for these.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain(v) for v in value]
    names = _DATACLASS_FIELDS.get(kind)
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    return _plain_general(value)


def _plain_general(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal | uuid.UUID | PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
        _DATACLASS_FIELDS[type(value)] = names
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=canonical_json)
    raise TypeError(f"the audit trail cannot encode a {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The canonical encoding of ``value``."""
    return json.dumps(
        plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def object_digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a domain object; empty for None."""
    if value is None:
        return ""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def event_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical encoding of an event's fields, ``prev_hash`` included."""
    return hashlib.sha256(canonical_json({"v": 1, **fields})).hexdigest()
