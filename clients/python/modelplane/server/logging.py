"""structlog set-up: JSON lines on stderr, with the request context bound per RPC and the
process id on every line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

#: The name of the root handler this module installs (replaced, not doubled, on a second call).
_HANDLER = "modelplane-json"


def _add_pid(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The process id on every record: with ``--workers N`` it tells the workers apart.
    Other processes a record names take keys of their own (``worker_pid``, ``observer_pid``)."""
    event.setdefault("pid", os.getpid())
    return event


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog (and the standard library's logging) to stderr as JSON lines."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_pid,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Records of the standard library's loggers (alembic's migrations, grpc, numba) become
    # the same JSON lines, with the logger's name.
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                _add_pid,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
