"""Parsing and validation of resource names (AIP-122) and identifiers.

Every identifier is a lowercase RFC-1034 label, so no name can smuggle a path, a URI, a query,
control characters or whitespace: anything else is refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelplane.errors import InvalidArgument
from modelplane.ids import ID_RULE, is_id

_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: A label key: 1-63 lowercase ASCII letters, digits, '_', '.', '-', from a letter to a letter
#: or digit.
LABEL_KEY = re.compile(r"[a-z](?:[a-z0-9_.-]{0,61}[a-z0-9])?")
#: A label value: up to 63 ASCII letters, digits, '_', '.', '-' (stored values of this form
#: exist, so it is not narrowed to Kubernetes' rule that a value start and end with a letter or
#: digit).
LABEL_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut to 80 characters: a message echoes what the
    caller sent, and gRPC refuses a status whose metadata outgrows 16 KiB."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


def check_id(value: str, what: str = "id", field: str = "") -> str:
    """``value`` when it is a valid lowercase RFC-1034 identifier; ``field`` is the request
    field that holds it (``what`` when not given), named in the error's metadata."""
    if not is_id(value):
        raise InvalidArgument(
            f"{what} {shown(value)} is invalid: use {ID_RULE}",
            reason="INVALID_NAME",
            metadata={"field": field or what},
        )
    return value


def check_sha256(value: str, what: str = "sha256", field: str = "") -> str:
    """``value`` when it is a lowercase hex sha256 digest; ``field`` as for :func:`check_id`."""
    if not _SHA256.fullmatch(value):
        raise InvalidArgument(
            f"{what} {shown(value)} is not a sha256 digest (64 lowercase hex characters)",
            reason="INVALID_DIGEST",
            metadata={"field": field or what},
        )
    return value


def _parts(name: str, field: str, expected: str) -> list[str]:
    if not name:
        raise InvalidArgument(
            f"{field} is required ({expected})", reason="INVALID_NAME", metadata={"field": field}
        )
    return name.split("/")


def _bad(name: str, expected: str, field: str) -> InvalidArgument:
    return InvalidArgument(
        f"resource name {shown(name)} is invalid; expected {expected}",
        reason="INVALID_NAME",
        metadata={"field": field},
    )


def parse_model(name: str, field: str = "name") -> str:
    """``models/{model}`` → model id. ``field`` is the request field that holds the name
    (``name``, ``parent``, ``model.name``), named in the metadata of the error that refuses it,
    as for every parser here."""
    expected = "models/{model}"
    parts = _parts(name, field, expected)
    if len(parts) != 2 or parts[0] != "models":
        raise _bad(name, expected, field)
    return check_id(parts[1], "model id", field)


@dataclass(frozen=True)
class VersionRef:
    """A version named by number or through an alias."""

    model_id: str
    version: int | None = None
    alias: str | None = None


def parse_version(name: str, *, allow_alias: bool = False, field: str = "name") -> VersionRef:
    """``models/{model}/versions/{version}`` (or ``models/{model}@{alias}`` when allowed)."""
    expected = "models/{model}/versions/{version}" + (
        " or models/{model}@{alias}" if allow_alias else ""
    )
    parts = _parts(name, field, expected)
    if allow_alias and len(parts) == 2 and parts[0] == "models" and parts[1].count("@") == 1:
        model, alias = parts[1].split("@")
        return VersionRef(check_id(model, "model id", field), alias=check_id(alias, "alias", field))
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions":
        raise _bad(name, expected, field)
    model_id = check_id(parts[1], "model id", field)
    if not _VERSION.fullmatch(parts[3]):
        raise InvalidArgument(
            f"version {shown(parts[3])} is invalid: versions are positive integers",
            reason="INVALID_NAME",
            metadata={"field": field},
        )
    return VersionRef(model_id, version=int(parts[3]))


def parse_alias(name: str, field: str = "name") -> tuple[str, str]:
    """``models/{model}/aliases/{alias}`` → (model id, alias)."""
    expected = "models/{model}/aliases/{alias}"
    parts = _parts(name, field, expected)
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "aliases":
        raise _bad(name, expected, field)
    return check_id(parts[1], "model id", field), check_id(parts[3], "alias", field)


def parse_blob(name: str, field: str = "name") -> str:
    """``blobs/{sha256}`` → digest."""
    expected = "blobs/{sha256}"
    parts = _parts(name, field, expected)
    if len(parts) != 2 or parts[0] != "blobs":
        raise _bad(name, expected, field)
    return check_sha256(parts[1], field=field)


def parse_operation(name: str, field: str = "name") -> str:
    """``operations/{operation}`` → operation id."""
    expected = "operations/{operation}"
    parts = _parts(name, field, expected)
    if len(parts) != 2 or parts[0] != "operations":
        raise _bad(name, expected, field)
    return check_id(parts[1], "operation id", field)


#: The most labels a resource may carry.
MAX_LABELS = 64


def check_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    """Labels as Kubernetes-style short keys and values; ``field`` is the request field that
    holds them (``labels``, ``model.labels``), named in the error's metadata."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"at most {MAX_LABELS} labels are allowed",
            reason="INVALID_LABELS",
            metadata={"field": field, "limit": str(MAX_LABELS)},
        )
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"label key {shown(key)} is invalid: use lowercase ASCII letters, digits, '_', "
                "'.', '-' (1-63, starting with a letter)",
                reason="INVALID_LABELS",
                metadata={"field": field},
            )
        if not LABEL_VALUE.fullmatch(value):
            raise InvalidArgument(
                f"label value {shown(value)} of {key!r} is invalid: use up to 63 ASCII "
                "letters, digits, '_', '.', '-' (or leave it empty)",
                reason="INVALID_LABELS",
                metadata={"field": field},
            )
    return dict(labels)


def control_character(value: str, allowed: str = "") -> str | None:
    """The first control character of ``value`` not in ``allowed``: C0, DEL or C1 (a terminal
    takes U+009B for an escape sequence's start); None when there is none."""
    return next(
        (ch for ch in value if (ord(ch) < 32 and ch not in allowed) or 127 <= ord(ch) < 160),
        None,
    )


def check_text(
    value: str,
    what: str,
    limit: int = 10_000,
    *,
    single_line: bool = False,
    field: str = "",
    reason: str = "INVALID_ARGUMENT",
) -> str:
    """Bounded free text without NUL or control characters (newlines and tabs unless
    single-line; see :func:`control_character`). ``field``, when given, is the request field
    that holds the text, named in the error's metadata."""
    metadata = {"field": field} if field else None
    if len(value) > limit:
        raise InvalidArgument(
            f"{what} is longer than {limit} characters", reason=reason, metadata=metadata
        )
    ch = control_character(value, "" if single_line else "\n\t")
    if ch is not None:
        raise InvalidArgument(
            f"{what} contains a control character (code {ord(ch)})",
            reason=reason,
            metadata=metadata,
        )
    return value
