"""Input checks the CLI commands share: repeated keys, URLs without credentials, printable
forms of bytes the OS gave, and JSON output that survives out-of-range durations."""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from modelplane._code import without_credentials
from modelplane.cli._common import key_values
from modelplane.cli._output import EXIT_USAGE, CliError, to_dict

__all__ = ["without_credentials"]

#: Protobuf's Duration holds at most this many seconds either way (about 10,000 years).
DURATION_MAX_SECONDS = 315_576_000_000


def unique_key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs as :func:`key_values` reads them, but a key given twice is a usage
    error (exit 2) instead of the last one silently winning."""
    seen: set[str] = set()
    for item in items or []:
        key = item.partition("=")[0]
        if key in seen:
            raise CliError(f"{what} {key!r} is given more than once", EXIT_USAGE)
        seen.add(key)
    return key_values(items, what)


def add_label_replacement(parser: argparse.ArgumentParser, flag: str) -> None:
    """An update's ``flag KEY=VALUE`` (repeatable), which replaces every label, and
    ``--clear-labels``; read them back with :func:`replaced_labels`."""
    parser.add_argument(
        flag,
        action="append",
        metavar="KEY=VALUE",
        help="replaces all labels (repeatable, each key once)",
    )
    parser.add_argument(
        "--clear-labels",
        action="store_true",
        help=f"remove every label; with {flag}, only the labels given remain",
    )


def replaced_labels(items: list[str] | None, clear: bool, flag: str) -> dict[str, str] | None:
    """The labels an update sets (see :func:`add_label_replacement`): None when it leaves
    them alone."""
    if items is None and not clear:
        return None
    return unique_key_values(items, flag)


def printable(text: str) -> str:
    """``text`` as it can be sent and shown: bytes that were not UTF-8 in a file name or
    argument (held as surrogates) become ``\\xNN`` escapes."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def message_dict(message: Message) -> dict[str, Any]:
    """``message`` as :func:`to_dict` gives it, except that a Duration or Timestamp outside
    protobuf's JSON range (which the JSON mapping refuses) is written as its number of seconds,
    so one bad stored value does not keep every reader of the resource from seeing it."""
    try:
        return to_dict(message)
    except (json_format.Error, ValueError):
        pass
    fixed = copy.deepcopy(message)
    numbers: list[tuple[tuple[Any, ...], float]] = []
    _clear_out_of_range(fixed, (), numbers)
    doc = to_dict(fixed)
    for path, seconds in numbers:
        _put(doc, path, seconds)
    return doc


def _out_of_range_seconds(message: Message) -> float | None:
    name = message.DESCRIPTOR.full_name
    if name not in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return None
    try:
        json_format.MessageToJson(message)
    except (json_format.Error, ValueError):
        seconds: int = message.seconds  # type: ignore[attr-defined]
        nanos: int = message.nanos  # type: ignore[attr-defined]
        return seconds + nanos / 1e9 if nanos else seconds
    return None


def _clear_out_of_range(
    message: Message, path: tuple[Any, ...], numbers: list[tuple[tuple[Any, ...], float]]
) -> None:
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        items = list(enumerate(value)) if _is_repeated(field) else [(None, value)]
        for index, item in items:
            where = path + ((field.name,) if index is None else (field.name, index))
            seconds = _out_of_range_seconds(item)
            if seconds is not None:
                numbers.append((where, seconds))
                if index is None:
                    message.ClearField(field.name)
                else:
                    item.Clear()  # an empty one serializes; the number replaces it below
            else:
                _clear_out_of_range(item, where, numbers)


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def _put(doc: dict[str, Any], path: tuple[Any, ...], value: float) -> None:
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
