"""Writing a file so that readers only ever see it whole."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replaced_atomically(
    target: str | os.PathLike[str], *, durable: bool = False
) -> Iterator[BinaryIO]:
    """A new file beside ``target`` that replaces it when the block ends without an error,
    and is removed when it raises (KeyboardInterrupt included); ``durable`` fsyncs it first.

    Each call writes a temporary file of its own, so two writers of one target never mix
    their bytes: the last to finish replaces it whole.
    """
    path = Path(target)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with tmp.open("xb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
