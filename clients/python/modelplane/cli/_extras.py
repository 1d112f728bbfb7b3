"""The servers and file readers come with the package's extras; a command whose extra is not
installed exits 2 with the pip command that installs it, rather than with a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from modelplane.cli._output import EXIT_USAGE, CliError


@contextlib.contextmanager
def extra(name: str, what: str) -> Iterator[None]:
    """Wrap the imports ``what`` needs (e.g. "the sidecar"): an ImportError becomes
    ``CliError`` (exit 2) naming the missing module and ``pip install 'modelplane[name]'``."""
    try:
        yield
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise CliError(
            f"{what} needs modelplane[{name}] ({missing} is missing): "
            f"pip install 'modelplane[{name}]'",
            EXIT_USAGE,
        ) from None
