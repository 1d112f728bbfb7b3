"""Durations, times and sizes as the CLI and settings take them (``1h30m``, ``500us``, ``90``,
``-1h``, ``64MiB``)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

#: A number, then a unit (none for a bare number of seconds).
_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_UNIT = r"ns|us|µs|ms|s|m|h|d|w"
_DURATION = re.compile(rf"(?:\s*{_NUMBER}\s*(?:{_UNIT}))+\s*")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*({_UNIT})")
#: A bare number of seconds, as ``float`` writes one (``90``, ``0.5``, ``1e3``).
_SECONDS = re.compile(r"\s*(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
#: The fraction of a second in an ISO-8601 time (the date and the zone hold no "." or ",").
_FRACTION = re.compile(r"[.,](\d+)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "k": 2**10,
    "K": 2**10,
    "M": 2**20,
    "G": 2**30,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in a duration: amounts with units (``500us``, ``2ms``, ``30s``, ``10m``, ``1h``,
    ``7d``, ``1w``), several of them adding up (``1h30m``, ``1m30s``), or ``0``.

    A bare number other than 0 is refused (is ``--max-queue-delay 2`` two seconds or two
    milliseconds?) unless ``bare_seconds``: options named for seconds (``--timeout``,
    ``--drain-seconds``) take ``90`` or ``0.5`` as seconds."""
    if _SECONDS.fullmatch(text) and math.isfinite(seconds := float(text)):
        if bare_seconds or seconds == 0:
            return seconds
        raise ValueError(
            f"{text!r} needs a unit: {text.strip()}ms? {text.strip()}s? (500us, 2ms, 30s, 10m, "
            "1h30m, 7d)"
        )
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a duration; use amounts with units (500us, 2ms, 30s, 10m, 1h30m, 7d)"
        )
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration: it is too long")
    return seconds


def parse_time(text: str, now: datetime | None = None, *, round_up: bool = False) -> datetime:
    """A UTC instant from ISO-8601 (``2026-11-26T10:00:00Z``, ``2026-11-26``; no zone means
    UTC), ``now``, or a time a duration before now (``-1h``, ``-30m``, ``-7d``, ``-1h30m``).

    A datetime holds microseconds: further digits (``.224222999``, as pandas or DuckDB print
    nanoseconds) are dropped, or with ``round_up`` round up to the next microsecond when not
    all 0. Against times stamped in microseconds, a bound compared with ``>=`` or ``<`` (a
    window's start and end) stays exact when rounded up, one compared with ``<=`` or ``>``
    (as of a time) when rounded down."""
    value = text.strip()
    now = now or datetime.now(UTC)
    if value.lower() == "now":
        return now
    if value.startswith("-"):
        try:
            return datetime.fromtimestamp(now.timestamp() - parse_duration(value[1:]), UTC)
        except (ValueError, OverflowError, OSError):
            pass  # not a duration, or one reaching past the years a datetime can hold
    else:
        try:
            parsed = datetime.fromisoformat(value)
            parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
            fraction = _FRACTION.search(value)
            if round_up and fraction and fraction.group(1)[6:].strip("0"):
                parsed += timedelta(microseconds=1)
            return parsed
        except (ValueError, OverflowError):
            pass  # not ISO-8601, or past the years 1 to 9999 once in UTC
    raise ValueError(
        f"{text!r} is not a time; use ISO-8601 (2026-11-26T10:00:00Z, 2026-11-26; no zone is "
        "UTC) or a time relative to now (-1h, -30m, -7d, -1h30m)"
    )


def parse_size(text: str) -> int:
    """Bytes in a size: ``1048576``, ``64MiB``, ``1GB``, ``512K``."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; use e.g. 64MiB, 1GB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds`` (``1.5ms``, ``2s``, ``10m``)."""
    for unit, scale in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds / 1e-6:g}us"
