"""Ctrl-C (SIGINT) stops any ``modelplane`` command with exit 130 and no traceback, however early
it comes: while the CLI's modules and gRPC are still being imported as much as during a call.

The moments are found in the child's memory map rather than by the clock, so that a loaded
machine cannot move them: a library is mapped when the module that needs it is imported.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelplane.testing import launch

BIN = Path(sys.executable).parent
ENTRY_POINTS = {
    "console script": [str(BIN / "modelplane")],
    "python -m": [sys.executable, "-m", "modelplane.cli"],
}

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


def _mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _started(pid: int, argv: list[str]) -> bool:
    """Whether ``pid`` runs ``argv``: the launcher has replaced itself with it."""
    try:
        running = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return argv in (running, running[1:])  # a script runs as its interpreter, then its path


@pytest.fixture
def listener() -> Iterator[tuple[str, Callable[[], int]]]:
    """HOST:PORT of a server that accepts connections and never answers on them, and how
    many connections it has accepted so far."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(sock.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", lambda: len(held)
    sock.close()
    for conn in held:
        conn.close()


def _interrupted_when(
    entry: list[str], server: str, moment: Callable[[int], bool]
) -> subprocess.CompletedProcess[str]:
    """Run ``models list`` against ``server``, and send SIGINT once ``moment(pid)`` holds."""
    argv = [*entry, "--server", server, "--timeout", "60", "models", "list"]
    child = subprocess.Popen(
        [*launch.prefix(default_sigint=True), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (_started(child.pid, argv) and moment(child.pid)):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.0005)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    "moment",
    [
        "while the CLI's own modules are imported",  # getpass maps termios, before argparse runs
        "while gRPC is imported",
        "while the call waits for an answer",
    ],
)
def test_ctrl_c_exits_130_without_a_traceback(
    entry: str, moment: str, listener: tuple[str, Callable[[], int]]
) -> None:
    server, accepted = listener
    moments: dict[str, Callable[[int], bool]] = {
        "while the CLI's own modules are imported": lambda pid: _mapped(pid, "termios"),
        "while gRPC is imported": lambda pid: _mapped(pid, "cygrpc"),
        "while the call waits for an answer": lambda pid: accepted() > 0,
    }
    done = _interrupted_when(ENTRY_POINTS[entry], server, moments[moment])
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")
