"""The small filter and order-by languages of List calls."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.names import LABEL_KEY, LABEL_VALUE, check_labels, check_text, shown
from modelplane.errors import InvalidArgument

#: The metadata of a refused filter, order or update mask: the request field it came in.
FILTER_FIELD = {"field": "filter"}
ORDER_FIELD = {"field": "order_by"}
MASK_FIELD = {"field": "update_mask"}


@dataclass(frozen=True)
class Filter:
    """A parsed filter: one value per label key and per field, all of which must hold.

    ``matches_nothing`` is set when two terms ask one key for different values: no resource
    can satisfy both, so a list answers nothing whatever ``labels`` and ``fields`` say.
    """

    labels: dict[str, str]
    fields: dict[str, str]
    matches_nothing: bool


def _term_error(term: str, allowed: Mapping[str, object]) -> InvalidArgument:
    return InvalidArgument(
        f"filter term {shown(term)} is invalid; use space-separated labels.KEY=VALUE"
        + (f" or {' or '.join(f'{a}=VALUE' for a in allowed)}" if allowed else "")
        + ' terms, each VALUE bare or in double quotes ("VALUE")',
        reason="INVALID_FILTER",
        metadata=FILTER_FIELD,
    )


#: The characters AIP-160's comparisons are written with (``!=``, ``<=``, ``:``, ``=~``...):
#: no key or value a filter compares holds one.
_OPERATOR_CHARS = "=!<>:~"
#: AIP-160's words that join or negate terms, which these filters do not take.
_LOGIC_WORDS = ("AND", "OR", "NOT")


def _supported(allowed: Mapping[str, object]) -> str:
    return "labels.KEY=VALUE" + "".join(f" or {a}=VALUE" for a in allowed)


def _unsupported(term: str, what: str, allowed: Mapping[str, object]) -> InvalidArgument:
    return InvalidArgument(
        f"filter term {shown(term)} uses {what}, which filters do not support: only "
        f"{_supported(allowed)} terms are supported, separated by spaces, all of which must "
        "hold",
        reason="INVALID_FILTER",
        metadata=FILTER_FIELD,
    )


def _operator(term: str) -> tuple[str, str, str]:
    """``term`` as (key, operator, value): the operator is the run of
    :data:`_OPERATOR_CHARS` that ends the key (empty when the term has none)."""
    start = next((i for i, ch in enumerate(term) if ch in _OPERATOR_CHARS), len(term))
    end = start
    while end < len(term) and term[end] in _OPERATOR_CHARS:
        end += 1
    if term[start:end].startswith("=") and end > start + 1 and term[start + 1] not in "=~":
        end = start + 1  # '=' and a value that starts oddly ('=<x'): the value is refused
    return term[:start], term[start:end], term[end:]


def _check_syntax(terms: list[str], allowed: Mapping[str, object]) -> None:
    """Refuse the parts of AIP-160 these filters do not take, which splitting a term on its
    first '=' would misread as a strange key or value: another comparison (``!=``, ``<``,
    ``>``, ``<=``, ``>=``, ``==``, ``:``, ``=~``, ``!~``), negation (``-`` or ``NOT``),
    ``AND``/``OR`` and parentheses, and spaces around an operator."""
    for i, term in enumerate(terms):
        if term in _LOGIC_WORDS:
            raise _unsupported(term, f"the word {term}", allowed)
        if term.startswith("-") or (term.startswith("!") and term[1:2] not in ("=", "~")):
            raise _unsupported(term, f"negation ({term[0]!r})", allowed)
        if term.startswith("(") or term.endswith(")"):
            raise _unsupported(term, "parentheses", allowed)
        _, op, _ = _operator(term)
        nxt = terms[i + 1] if i + 1 < len(terms) else ""
        if not op and nxt[:1] and nxt[0] in _OPERATOR_CHARS:
            raise InvalidArgument(
                f"filter term {shown(term + ' ' + nxt)} is invalid: write each term without "
                f"spaces around its operator ({_supported(allowed)})",
                reason="INVALID_FILTER",
                metadata=FILTER_FIELD,
            )
        if op not in ("", "="):
            raise _unsupported(term, f"the operator {op!r}", allowed)


#: A filter term: runs of characters other than spaces and quotes, and quoted runs, which may
#: hold spaces (an unclosed quote runs to the end, and is refused as such).
_TERM = re.compile(r'(?:[^\s"]+|"[^"]*"?)+')


def _terms(text: str) -> list[str]:
    """The space-separated terms of ``text``, a quoted value kept whole (``labels.note="a b"``
    is one term, its value refused for the space it holds rather than split into two terms)."""
    return _TERM.findall(text)


def _unquoted(value: str, term: str) -> str:
    """``value`` without one pair of enclosing double quotes (AIP-160 string literals).

    No value a filter can compare holds a quote or a backslash, so neither may remain: a quote
    left over (unbalanced, or inside the value) or an escape is refused rather than compared
    literally, which would match nothing.
    """
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if '"' in value or "\\" in value:
        raise InvalidArgument(
            f"filter term {shown(term)} is invalid: quote a value with one pair of double "
            'quotes (KEY="VALUE"); quotes inside a value and backslash escapes are not allowed',
            reason="INVALID_FILTER",
            metadata=FILTER_FIELD,
        )
    return value


def parse_filter(text: str, fields: Mapping[str, Callable[[str], str]] | None = None) -> Filter:
    """Space-separated ``labels.KEY=VALUE`` and ``FIELD=VALUE`` terms, all of which must hold.

    A value may be written in double quotes (``labels.team="risk"``), as AIP-160 writes string
    literals. ``fields`` maps each field that may be filtered on to a function that checks a
    value and gives its canonical form (so that two spellings of one value are one term). A
    label value may be empty (labels allow it) and matches only an empty value; a key repeated
    with the same value is one term, with different values the filter matches nothing. A label
    key or value that no label can have is refused (INVALID_FILTER) rather than matching
    nothing. A function of ``fields`` refuses a value with INVALID_FILTER and
    :data:`FILTER_FIELD`, as every refusal here names the ``filter`` field.
    """
    allowed = dict(fields or {})
    labels: dict[str, str] = {}
    values: dict[str, str] = {}
    conflict = False
    words = _terms(text)
    _check_syntax(words, allowed)
    for term in words:
        key, sep, raw = term.partition("=")
        label = key.removeprefix("labels.") if key.startswith("labels.") else None
        if not sep or not key or label == "":
            raise _term_error(term, allowed)
        value = _unquoted(raw, term)
        if label is None and not value:
            raise _term_error(term, allowed)
        if label is not None:
            if not LABEL_KEY.fullmatch(label):
                raise InvalidArgument(
                    f"label key {shown(label)} in filter term {shown(term)} is invalid, so no "
                    "label can match it: label keys are 1-63 lowercase ASCII letters, "
                    "digits, '_', '.', '-', starting with a letter",
                    reason="INVALID_FILTER",
                    metadata=FILTER_FIELD,
                )
            if not LABEL_VALUE.fullmatch(value):
                raise InvalidArgument(
                    f"label value {shown(value)} in filter term {shown(term)} is invalid, so "
                    "no label can match it: label values are up to 63 ASCII letters, digits, "
                    "'_', '.', '-'",
                    reason="INVALID_FILTER",
                    metadata=FILTER_FIELD,
                )
            terms, name, canonical = labels, label, value
        elif key in allowed:
            terms, name, canonical = values, key, allowed[key](value)
        else:
            raise InvalidArgument(
                f"cannot filter on {shown(key)}", reason="INVALID_FILTER", metadata=FILTER_FIELD
            )
        if terms.setdefault(name, canonical) != canonical:
            conflict = True
    return Filter(labels, values, conflict)


def parse_order(text: str, allowed: tuple[str, ...], default: str) -> tuple[str, bool]:
    """``FIELD`` or ``FIELD desc`` → (field, descending)."""
    parts = (text or default).split()
    if not parts or parts[0] not in allowed or len(parts) > 2:
        raise InvalidArgument(
            f"order_by {shown(text)} is invalid; use one of {', '.join(allowed)}, "
            "optionally followed by ' desc'",
            reason="INVALID_ORDER_BY",
            metadata=ORDER_FIELD,
        )
    if len(parts) == 2 and parts[1].lower() not in ("asc", "desc"):
        raise InvalidArgument(
            f"order_by direction {shown(parts[1])} is invalid; use asc or desc",
            reason="INVALID_ORDER_BY",
            metadata=ORDER_FIELD,
        )
    return parts[0], len(parts) == 2 and parts[1].lower() == "desc"


def _populated(value: object) -> bool:
    """Whether a field's value differs from its proto3 default: a non-empty string, list or
    map (the only kinds of field that an update without a mask may set)."""
    return isinstance(value, str | list | tuple | Mapping) and len(value) > 0


def masked_changes(
    paths: list[str],
    values: Mapping[str, object],
    allowed: tuple[str, ...],
    checks: Mapping[str, Callable[[Any], object]] | None = None,
    *,
    resource: str = "",
    implicit: bool = False,
) -> dict[str, object]:
    """The validated changes an update mask asks for.

    ``checks`` validates (and normalises) a field by path; without one, ``labels`` are checked
    as labels and every other field as free text. ``resource`` is the request field that
    holds the updated resource (``model``, ``version``): a refused value names
    ``{resource}.{path}`` in the error's metadata. With ``implicit``, an empty mask stands for
    the fields ``values`` sets (AIP-134): the strings, lists and maps that are not empty. A
    field is cleared only by naming it in a mask.
    """
    if not paths and implicit:
        paths = [p for p in allowed if _populated(values[p])]
        if not paths:
            raise InvalidArgument(
                "nothing to update: the request sets none of the fields "
                f"{', '.join(allowed)} and names none in update_mask; set the fields to "
                "change, or name the fields to clear in update_mask",
                reason="INVALID_UPDATE_MASK",
                metadata=MASK_FIELD,
            )
    if not paths:
        raise InvalidArgument(
            f"update_mask is empty; name fields to change among {', '.join(allowed)}",
            reason="INVALID_UPDATE_MASK",
            metadata=MASK_FIELD,
        )
    changes: dict[str, object] = {}
    for path in paths:
        if path not in allowed:
            raise InvalidArgument(
                f"field {shown(path)} cannot be updated; use {', '.join(allowed)}",
                reason="INVALID_UPDATE_MASK",
                metadata=MASK_FIELD,
            )
        value = values[path]
        field = f"{resource}.{path}" if resource else path
        if checks and path in checks:
            changes[path] = checks[path](value)
        elif path == "labels":
            changes[path] = check_labels(dict(value), field)  # type: ignore[call-overload]
        else:
            changes[path] = check_text(str(value), path, field=field)
    return changes
