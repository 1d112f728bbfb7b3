"""``keep_large_buffers``: megabyte buffers freed and allocated again stay on the heap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Three 1 MiB buffers allocated, touched and freed, 100 times over: with glibc's defaults the
# freed heap top passes the trim threshold and is handed back, so every round faults the pages
# in again. The child prints its minor page faults over those rounds.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "keep":
        from modelplane.server.memory import keep_large_buffers
        print(keep_large_buffers())
    else:
        print(None)

    def cycle():
        bufs = [bytearray(1 << 20) for _ in range(3)]
        for b in bufs:
            b[::4096] = b"x" * len(b[::4096])

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        cycle()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux's")
def test_large_buffers_are_reused_instead_of_faulted_in_again() -> None:
    set_, kept = _faults("keep")
    _, default = _faults("default")
    assert set_ == "True"
    # 100 rounds x 3 MiB is 76,800 pages: glibc's defaults fault most of them in again.
    assert default > 20_000, default
    assert kept < default // 50, (kept, default)


def test_malloc_settings_in_the_environment_win() -> None:
    set_, _ = _faults("keep", MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    assert set_ == "False"
