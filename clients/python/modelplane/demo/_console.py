"""Narration and process helpers shared by the demo's steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

#: Where the demo keeps everything it creates.
STATE = Path(".modelplane") / "demo"
MODEL = "breast-cancer"


def say(text: str) -> None:
    """A step's headline."""
    print(f"\n==> {text}", flush=True)


def note(text: str) -> None:
    """A detail under the current step."""
    print(f"    {text}", flush=True)


def wait_serving(address: str, proc: subprocess.Popen[Any], what: str) -> None:
    """Wait for ``what`` to report SERVING, or stop the demo saying why."""
    from modelplane.testing import wait_serving as wait

    try:
        wait(address, timeout=120, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"{what}: {exc}; see {STATE}/*.log") from None


def cli(*args: str) -> list[str]:
    """The argv of a ``modelplane`` CLI call with this interpreter."""
    return [sys.executable, "-m", "modelplane.cli", *args]


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a server and wait for it to drain (kill it after 30 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
