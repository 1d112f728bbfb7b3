"""Writing a file so that readers only ever see it whole."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _shared(target: str) -> bool:
    """Whether ``target`` must be written where it is rather than replaced: a file descriptor's
    name (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``, whose file the shell may share
    with other writers) or anything that is not a regular file (a pipe, a terminal)."""
    if target.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode)


_NAMED_DESCRIPTORS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _descriptor(target: str) -> int | None:
    """The open file descriptor ``target`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``), or None."""
    fd = _NAMED_DESCRIPTORS.get(target)
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        number = target.removeprefix(prefix)
        if number != target and number.isascii() and number.isdigit():
            fd = int(number)
    if fd is None:
        return None
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


@contextlib.contextmanager
def replaced_atomically(
    target: str | os.PathLike[str], *, durable: bool = False
) -> Iterator[BinaryIO]:
    """A new file beside ``target`` that replaces it when the block ends without an error,
    and is removed when it raises (KeyboardInterrupt included); ``durable`` fsyncs it first.

    Each call writes a temporary file of its own, so two writers of one target never mix
    their bytes: the last to finish replaces it whole. A symbolic link keeps pointing at the
    replaced file, which keeps its permissions. ``/dev/stdout``, a pipe or another target that
    is not a regular file is written directly.
    """
    text = os.fspath(target)
    if _shared(text):
        # A descriptor's name is written through that descriptor: reopening it would start a
        # redirected file over from its beginning, losing what the shell wrote before.
        fd = _descriptor(text)
        with open(os.dup(fd), "wb") if fd is not None else open(text, "wb") as direct:
            yield direct
        return
    path = Path(os.path.realpath(text))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with tmp.open("xb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if str(tmp) in (exc.filename, exc.filename2):
            # The temporary is ours, not the caller's: name the file they asked for.
            raise _naming(exc, text) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(exc: OSError, target: str) -> OSError:
    """``exc`` (same class and errno) naming ``target`` instead of the temporary file."""
    if exc.errno is None:
        return type(exc)(f"{target}: {exc}")
    return type(exc)(exc.errno, exc.strerror, target)
