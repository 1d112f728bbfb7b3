"""Options of the prediction log (env prefix ``MODELPLANE_LOG_``, flags ``--log-*``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelplane.units import parse_duration, parse_size

Durability = Literal["async", "sync"]
Compression = Literal["none", "lz4", "zstd"]


class PredictionLogSettings(BaseSettings):
    """Where and how the sidecar logs predictions. Every field has a ``MODELPLANE_LOG_`` env.

    Durations accept units (``500ms``, ``10m``, ``7d``) and sizes accept ``64MiB`` and the
    like; :meth:`from_args` builds one from the ``--log-*`` flags of :func:`add_arguments`.
    """

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_LOG_", extra="forbid")

    dir: Path | None = Field(
        default=None, description="Directory of the Arrow files; logging is off when unset."
    )
    durability: Durability = Field(
        default="async",
        description=(
            "async: written every flush interval (a kill -9 loses at most the last interval); "
            "sync: each append's ticket completes once its records are written and fsynced."
        ),
    )
    flush_interval: float = Field(
        default=1.0,
        gt=0,
        description="async mode: most seconds a record waits before it is written.",
    )
    rotate_size: int = Field(
        default=64 * 2**20,
        ge=4096,
        description=(
            "Bytes after which a file is closed and a new one begun. A soft limit: it is "
            "checked after each write round, which is written whole, so a file can pass it by "
            "one round (up to queue_rows records, or one request holding more)."
        ),
    )
    rotate_age: float = Field(
        default=3600.0, gt=0, description="Seconds after which a file is closed, even when idle."
    )
    retention: float | None = Field(
        default=7 * 86400.0,
        description="Files last written longer ago than this are deleted; None keeps them all.",
    )
    sample_rate: float = Field(
        default=1.0,
        description="Fraction of requests logged, chosen by a hash of the request id (rejected "
        "requests are always logged).",
    )
    # NoDecode: the env var takes the flag's A,B (pydantic-settings would read it as JSON).
    exclude_features: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Feature columns or whole inputs never written (e.g. personal data): "
        "A,B like the flag (a JSON list is read too).",
    )
    queue_rows: int = Field(
        default=65536, ge=1, description="Rows waiting to be written beyond which appends wait."
    )
    compression: Compression = Field(
        default="none", description="Arrow IPC buffer compression of the files: none, lz4 or zstd."
    )

    @field_validator("flush_interval", "rotate_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> Any:
        return parse_retention(value) if isinstance(value, str) else value

    @field_validator("rotate_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"sample rate must be a fraction within [0, 1], not {value}")
        return value

    @field_validator("exclude_features", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return names_value(value)

    @model_validator(mode="after")
    def _retention_after_rotation(self) -> PredictionLogSettings:
        if self.retention is not None and self.retention <= self.rotate_age:
            raise ValueError(
                f"retention ({self.retention:g}s) must be longer than rotate age "
                f"({self.rotate_age:g}s), or files still being written would be deleted"
            )
        return self

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictionLogSettings:
        """Settings from the flags of :func:`add_arguments` (``log_dir`` may be None)."""
        values = {
            name: getattr(args, f"log_{name}")
            for name in cls.model_fields
            if getattr(args, f"log_{name}", None) is not None
        }
        return cls(**values)


def parse_retention(text: str) -> float | None:
    """A retention duration; ``none`` or ``forever`` keeps files for ever."""
    if text.strip().lower() in ("", "none", "forever"):
        return None
    return parse_duration(text)


def parse_rate(text: str) -> float:
    """A sample rate: a fraction within [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number; use a fraction like 0.1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"sample rate must be a fraction within [0, 1], not {text}")
    return value


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def names_value(value: Any) -> Any:
    """A list-of-names setting given as text (a flag, an env var): ``A,B``, or a JSON list
    (what the supervisor of ``--workers N`` hands its workers); anything else is left to
    validation."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except ValueError:
            pass
        else:
            if isinstance(decoded, list):
                return tuple(decoded)
    return parse_names(value)


def _arg(parse: Any, minimum: float | None = None) -> Any:
    """An argparse ``type`` reporting ``ValueError`` messages as usage errors."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if minimum is not None and value is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is below the minimum of {minimum:g}")
        return value

    convert.__name__ = getattr(parse, "__name__", "value").removeprefix("parse_")
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--log-*`` flags; read them back with :meth:`PredictionLogSettings.from_args`."""
    group = parser.add_argument_group("prediction log")
    group.add_argument("--log-dir", type=Path, help="directory of the Arrow prediction log")
    group.add_argument(
        "--log-durability",
        choices=("async", "sync"),
        help="async (default): written every flush interval; sync: acknowledged once fsynced",
    )
    group.add_argument(
        "--log-flush-interval",
        type=_arg(parse_duration, 1e-6),
        metavar="DURATION",
        help="async mode: how often records are written (default 1s)",
    )
    group.add_argument(
        "--log-rotate-size",
        type=_arg(parse_size, 4096),
        metavar="SIZE",
        help=(
            "start a new file once one passes this many bytes (default 64MiB; checked after "
            "each write round, so a file can pass it by one round: up to "
            "MODELPLANE_LOG_QUEUE_ROWS records)"
        ),
    )
    group.add_argument(
        "--log-rotate-age",
        type=_arg(parse_duration, 1e-6),
        metavar="DURATION",
        help="start a new file after this long (default 1h)",
    )
    group.add_argument(
        "--log-retention",
        type=_arg(parse_retention),
        metavar="DURATION",
        help="delete files older than this (default 7d; 'none' keeps them)",
    )
    group.add_argument(
        "--log-sample-rate",
        type=_arg(parse_rate),
        metavar="FRACTION",
        help="fraction of requests logged, by request id (default 1)",
    )
    group.add_argument(
        "--log-exclude-features",
        type=_arg(parse_names),
        metavar="A,B",
        help="feature columns or inputs never logged (default none)",
    )
