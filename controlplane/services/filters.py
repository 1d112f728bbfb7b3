"""The small filter and order-by languages of List calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modelplane.errors import InvalidArgument


def parse_filter(text: str, allowed: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Space-separated ``labels.KEY=VALUE`` and ``FIELD=VALUE`` terms, all of which must hold.

    Returns (label terms, field terms); fields must be among ``allowed``.
    """
    labels: dict[str, str] = {}
    fields: dict[str, str] = {}
    for term in text.split():
        key, sep, value = term.partition("=")
        if not sep or not key or not value:
            raise InvalidArgument(
                f"filter term {term!r} is invalid; use labels.KEY=VALUE"
                + (f" or one of {', '.join(f'{a}=VALUE' for a in allowed)}" if allowed else ""),
                reason="INVALID_FILTER",
            )
        if key.startswith("labels."):
            labels[key.removeprefix("labels.")] = value
        elif key in allowed:
            fields[key] = value
        else:
            raise InvalidArgument(f"cannot filter on {key!r}", reason="INVALID_FILTER")
    return labels, fields


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
