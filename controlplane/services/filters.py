"""The small filter and order-by languages of List calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelplane.errors import InvalidArgument


@dataclass(frozen=True)
class Filter:
    """A parsed filter: one value per label key and per field, all of which must hold.

    ``matches_nothing`` is set when two terms ask one key for different values: no resource
    can satisfy both, so a list answers nothing whatever ``labels`` and ``fields`` say.
    """

    labels: dict[str, str]
    fields: dict[str, str]
    matches_nothing: bool


def parse_filter(text: str, fields: Mapping[str, Callable[[str], str]] | None = None) -> Filter:
    """Space-separated ``labels.KEY=VALUE`` and ``FIELD=VALUE`` terms, all of which must hold.

    ``fields`` maps each field that may be filtered on to a function that checks a value and
    gives its canonical form (so that two spellings of one value are one term). A label value
    may be empty (labels allow it) and matches only an empty value; a key repeated with the
    same value is one term, with different values the filter matches nothing.
    """
    allowed = dict(fields or {})
    labels: dict[str, str] = {}
    values: dict[str, str] = {}
    conflict = False
    for term in text.split():
        key, sep, value = term.partition("=")
        label = key.removeprefix("labels.") if key.startswith("labels.") else None
        if not sep or not key or label == "" or (label is None and not value):
            raise InvalidArgument(
                f"filter term {term[:100]!r} is invalid; use labels.KEY=VALUE"
                + (f" or one of {', '.join(f'{a}=VALUE' for a in allowed)}" if allowed else ""),
                reason="INVALID_FILTER",
            )
        if label is not None:
            terms, name, canonical = labels, label, value
        elif key in allowed:
            terms, name, canonical = values, key, allowed[key](value)
        else:
            raise InvalidArgument(f"cannot filter on {key[:100]!r}", reason="INVALID_FILTER")
        if terms.setdefault(name, canonical) != canonical:
            conflict = True
    return Filter(labels, values, conflict)


def parse_order(text: str, allowed: tuple[str, ...], default: str) -> tuple[str, bool]:
    """``FIELD`` or ``FIELD desc`` → (field, descending)."""
    parts = (text or default).split()
    if not parts or parts[0] not in allowed or len(parts) > 2:
        raise InvalidArgument(
            f"order_by {text!r} is invalid; use one of {', '.join(allowed)}, "
            "optionally followed by ' desc'",
            reason="INVALID_ORDER_BY",
        )
    if len(parts) == 2 and parts[1].lower() not in ("asc", "desc"):
        raise InvalidArgument(
            f"order_by direction {parts[1]!r} is invalid", reason="INVALID_ORDER_BY"
        )
    return parts[0], len(parts) == 2 and parts[1].lower() == "desc"


def masked_changes(
    paths: list[str],
    values: Mapping[str, object],
    allowed: tuple[str, ...],
    checks: Mapping[str, Callable[[Any], object]] | None = None,
) -> dict[str, object]:
    """The validated changes an update mask asks for.

    ``checks`` validates (and normalises) a field by path; without one, ``labels`` are checked
    as labels and every other field as free text.
    """
    from controlplane.names import check_labels, check_text

    if not paths:
        raise InvalidArgument(
            f"update_mask is empty; name fields to change among {', '.join(allowed)}",
            reason="INVALID_UPDATE_MASK",
        )
    changes: dict[str, object] = {}
    for path in paths:
        if path not in allowed:
            raise InvalidArgument(
                f"field {path!r} cannot be updated; use {', '.join(allowed)}",
                reason="INVALID_UPDATE_MASK",
            )
        value = values[path]
        if checks and path in checks:
            changes[path] = checks[path](value)
        elif path == "labels":
            changes[path] = check_labels(dict(value))  # type: ignore[call-overload]
        else:
            changes[path] = check_text(str(value), path)
    return changes
