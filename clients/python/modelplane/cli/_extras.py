"""The servers and file readers come with the package's extras; a command whose extra is not
installed exits 2 with the pip command that installs it, rather than with a traceback."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from modelplane.cli._output import EXIT_USAGE, CliError

#: Our own packages: a module of theirs that cannot be imported is a bug, not a missing extra.
_OURS = frozenset({"modelplane", "controlplane", "sidecar"})


def _absent(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


@contextlib.contextmanager
def extra(name: str, what: str) -> Iterator[None]:
    """Wrap the imports ``what`` needs (e.g. "the sidecar"): a package that is not installed
    becomes ``CliError`` (exit 2) naming it and ``pip install 'modelplane[name]'``. Any other
    import failure (one of our own modules, or an installed package that refuses to load)
    passes through, to be reported as what it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if not top or top in _OURS or not _absent(top):
            raise
        raise CliError(
            f"{what} needs modelplane[{name}] ({top} is not installed): "
            f"pip install 'modelplane[{name}]'",
            EXIT_USAGE,
        ) from None
