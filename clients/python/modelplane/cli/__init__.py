"""The ``modelplane`` command line: the contract scripts and CI jobs call.

Global options come before the subcommand. With ``--output json`` every command prints exactly
one JSON document on stdout; progress and logs go to stderr. Exit codes: 0 success, 1 a check
that failed, 2 usage error, 3 the server answered an error, 4 server unreachable or no answer
before the call's deadline, 5 not done when a wait's timeout passed, 70 an internal error (a
bug in the CLI, named in one line), 130 stopped by Ctrl-C (SIGINT).

This module imports nothing heavy: the console script imports it before :func:`run` can take
charge of Ctrl-C, so the commands, gRPC and protobuf are imported by :func:`run` (through
:mod:`modelplane.cli._main`), where an interrupt is an exit 130 like any other.
"""

from __future__ import annotations

import os
import signal
import sys

#: Type checkers take this as true; no ``import typing`` at run time (see the module docstring).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import FrameType

#: The exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it.
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    from modelplane.cli._main import build_parser as build

    return build()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from modelplane.cli._main import main as run_command

    return run_command(argv)


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGINT after the command returned (while the interpreter shuts down: gRPC's and the
    threads' clean-up): exit 130 at once, with what the command printed."""
    _flush()
    os._exit(EXIT_INTERRUPTED)


def _flush() -> None:
    """Write out what the command printed, before an exit that skips the interpreter's."""
    from contextlib import suppress

    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe or stream: nothing more to keep
            stream.flush()


def run() -> None:
    """Console-script entry point: exits with :func:`main`'s code, or with 130 and no traceback
    whenever Ctrl-C (SIGINT) comes: while the commands are imported and the arguments parsed,
    while a command runs, and while the interpreter shuts down after it. A process started
    with SIGINT ignored (a background job of a script) keeps ignoring it."""
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    code = EXIT_INTERRUPTED
    try:
        code = main()
    except KeyboardInterrupt:
        pass
    finally:
        if ours:
            signal.signal(signal.SIGINT, _exit_interrupted)
    if ours:
        # The interpreter's own shutdown puts SIGINT's default action back before it is done:
        # a Ctrl-C then would kill the process by the signal, with no exit code. So the exit
        # handlers run here, under the handler above, and the process ends without that stage.
        import atexit

        atexit._run_exitfuncs()
        _flush()
        os._exit(code)
    sys.exit(code)


__all__ = ["EXIT_INTERRUPTED", "build_parser", "main", "run"]
