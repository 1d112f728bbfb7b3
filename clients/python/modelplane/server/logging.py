"""structlog set-up: JSON lines on stderr, with the request context bound per RPC and the
process id on every line.

A line that cannot be written (stderr on a full disk, a pipe whose reader went away) is
dropped and counted (:func:`write_errors`), never raised: a log call sits on paths that must
finish whatever stderr does, such as refusing a request with its status or a SIGTERM's drain.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: The name of the root handler this module installs (replaced, not doubled, on a second call).
_HANDLER = "modelplane-json"
#: Lines that could not be written to stderr, by either logger.
_write_errors = 0
#: The counters of :func:`export_write_errors`, forgotten with their registries.
_exported: weakref.WeakSet[Any] = weakref.WeakSet()
#: Reentrant: a signal handler that logs may interrupt a line being written on its thread.
_write_lock = threading.RLock()


def write_errors() -> int:
    """How many log lines this process could not write to stderr (and dropped)."""
    return _write_errors


def _count_write_error() -> None:
    global _write_errors
    with _write_lock:
        _write_errors += 1
        for counter in list(_exported):
            counter.inc()


def export_write_errors(registry: CollectorRegistry) -> None:
    """Count the lines this process drops, those before too, in ``registry``'s
    ``modelplane_log_write_errors_total`` (per process, summed under ``--workers``): the one
    sign, where the logs themselves are lost, that they are being lost."""
    from prometheus_client import Counter

    counter = Counter(
        "modelplane_log_write_errors",
        "Log lines this server could not write to stderr (a full disk, a closed pipe) and dropped",
        registry=registry,
    )
    with _write_lock:
        counter.inc(_write_errors)
        _exported.add(counter)  # held while its registry holds it


class StderrLogger:
    """structlog's ``PrintLogger`` whose writes never raise: a line the stream refuses
    (``OSError``: a full disk, a file size limit, a closed pipe; ``ValueError``: a closed
    file) is dropped and counted in :func:`write_errors`."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        """Write ``message`` as one line."""
        with _write_lock:
            try:
                self._file.write(message + "\n")
                self._file.flush()
            except (OSError, ValueError):
                _count_write_error()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's stream handler, counting the lines it could not write (it
    never raises them: it reports them on stderr, which fails quietly too)."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            _count_write_error()
            return
        super().handleError(record)


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
    stream = sys.stderr
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: StderrLogger(stream),
        cache_logger_on_first_use=True,
    )
    # Records of the standard library's loggers (alembic's migrations, grpc, numba) become
    # the same JSON lines, with the logger's name.
    handler = _StderrHandler(stream)
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
