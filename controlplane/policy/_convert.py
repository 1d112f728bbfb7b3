"""Python values to CEL values and back.

Numbers: every Python ``int`` and ``float`` in the variables becomes a CEL ``double``. Metrics
arrive as floats or ints depending on where they were computed; making them all doubles means
a rule never depends on that accident, and ``validation.bad_rows / validation.rows`` divides
as a ratio instead of truncating. Integer literals in rules still work against these doubles:
``<``, ``<=``, ``>``, ``>=`` compare across int and double in CEL, and the evaluator adds the
cross-type numeric ``==``/``!=``/``in`` of the current CEL specification (so ``metrics.x >= 1``
and ``metrics.x == 1`` both hold for ``metrics.x = 1.0``). Arithmetic stays strictly typed as
CEL defines it: write ``champion.error_rate + 0.01``, not ``+ 1``.

Map keys keep their type (strings, or ints as CEL ``int``), since CEL maps have no double keys.
Datetimes become timestamps (naive ones are taken as UTC), timedeltas durations, enums their
value, dataclasses maps of their fields.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celpy import celtypes

from modelplane.errors import InvalidArgument


def _bad_input(path: str, value: Any) -> InvalidArgument:
    return InvalidArgument(
        f"policy input {path} has a value of type {type(value).__name__}, which rules cannot "
        "use; pass numbers, strings, booleans, lists, maps, datetimes or durations",
        reason="INVALID_POLICY_INPUT",
        metadata={"field": path},
    )


def _key(key: Any, path: str) -> celtypes.Value:
    if isinstance(key, str):
        return celtypes.StringType(key)
    if isinstance(key, bool):
        return celtypes.BoolType(key)
    if isinstance(key, int):
        return celtypes.IntType(key)
    raise _bad_input(f"{path} (a map key)", key)


def to_cel(value: Any, path: str = "value") -> Any:
    """The CEL value for a Python value; ``path`` names it in error messages."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, enum.Enum):
        return to_cel(value.value, path)
    if isinstance(value, int | float):
        # NaN is null: every comparison with it is false, so a negated one (``!(x < 0.8)``)
        # would pass; null makes the rule an error, which never passes.
        return None if value != value else celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return celtypes.TimestampType(aware.astimezone(UTC))
    if isinstance(value, timedelta):
        return celtypes.DurationType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({_key(k, path): to_cel(v, f"{path}.{k}") for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([to_cel(v, f"{path}[{i}]") for i, v in enumerate(value)])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_cel({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, path)
    if hasattr(value, "item") and callable(value.item):
        # numpy scalars
        return to_cel(value.item(), path)
    raise _bad_input(path, value)


def to_plain(value: Any) -> Any:
    """A JSON-friendly copy of an input value as a rule saw it (numbers as floats)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else repr(number)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "item") and callable(value.item):
        return to_plain(value.item())
    return repr(value)
