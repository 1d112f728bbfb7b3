"""glibc malloc thresholds for server processes that move megabyte buffers.

By default glibc maps each allocation above 128 KiB (raised dynamically up to 32 MiB as large
blocks are freed) and hands free memory at the top of the heap back to the kernel once it
passes twice that threshold. A server receiving 1 MiB messages frees several such buffers per
request, the heap top shrinks, and the next request faults the same pages in again: the
control plane took about 750 page faults per 1 MiB upload (bench/README.md, "Upload message
size"). :func:`keep_large_buffers` raises both thresholds so that those buffers are reused from
the heap. The cost is memory kept after a burst, up to the trim threshold.
"""

from __future__ import annotations

import ctypes
import os

import structlog

log = structlog.get_logger("modelplane.server.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Allocations below this come from the heap (glibc's own upper limit for the dynamic
#: threshold on 64-bit systems is 32 MiB).
MMAP_THRESHOLD = 16 << 20
#: Free memory at the top of the heap that is kept rather than returned to the kernel.
TRIM_THRESHOLD = 128 << 20


def keep_large_buffers() -> bool:
    """Set the thresholds, unless the environment sets glibc's own variables (those win) or
    the C library is not glibc. Returns whether they were set."""
    if any(os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc, or no C library handle at all
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("could not set the malloc thresholds")
    return done
