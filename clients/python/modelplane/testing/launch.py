"""Start a command with process settings applied first: a file size limit, an address-space
limit, a CPU affinity mask, a cgroup to join, SIGINT's default action.

A test process that has used gRPC must not start children with ``subprocess.Popen(...,
preexec_fn=...)``: a ``preexec_fn`` makes Python ``fork()`` the whole process, gRPC's fork
handlers restart its poller thread in the child, ``Popen`` closes that poller's epoll
descriptor before ``exec``, and now and then the child aborts before it runs the command
(``epoll_wait error: Bad file descriptor``, SIGABRT). Without a ``preexec_fn`` Python
starts children with ``vfork``, which runs no fork handlers. So the settings are applied by
a fresh interpreter that then replaces itself with the command::

    python -m modelplane.testing.launch [--file-size-limit BYTES] [--address-space-limit BYTES]
        [--cpus 0,2]
        [--cgroup-procs FILE] [--default-sigint] -- COMMAND [ARG...]

:func:`prefix` builds the part before ``COMMAND``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def prefix(
    *,
    file_size_limit: int | None = None,
    address_space_limit: int | None = None,
    cpus: Iterable[int] | None = None,
    cgroup_procs: Path | None = None,
    default_sigint: bool = False,
) -> list[str]:
    """The argv that runs the command after it with these settings applied."""
    argv = [sys.executable, "-m", __name__]
    if file_size_limit is not None:
        argv += ["--file-size-limit", str(file_size_limit)]
    if address_space_limit is not None:
        argv += ["--address-space-limit", str(address_space_limit)]
    if cpus is not None:
        argv += ["--cpus", ",".join(str(c) for c in sorted(cpus))]
    if cgroup_procs is not None:
        argv += ["--cgroup-procs", str(cgroup_procs)]
    if default_sigint:
        argv.append("--default-sigint")
    return [*argv, "--"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelplane.testing.launch")
    parser.add_argument(
        "--file-size-limit",
        type=int,
        help="RLIMIT_FSIZE in bytes; SIGXFSZ is ignored, so writes past it fail with EFBIG",
    )
    parser.add_argument(
        "--address-space-limit",
        type=int,
        help="RLIMIT_AS in bytes: allocations past it fail (a model asking for more memory than "
        "the machine would refuse, on a kernel that overcommits)",
    )
    parser.add_argument("--cpus", help="CPU affinity mask as a comma-separated list")
    parser.add_argument("--cgroup-procs", type=Path, help="a cgroup's cgroup.procs file to join")
    parser.add_argument(
        "--default-sigint",
        action="store_true",
        help="give SIGINT its default action: a test run as a background job of a script starts "
        "with SIGINT ignored, which its children inherit through exec, so Ctrl-C could not be "
        "tested on them",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if args.cgroup_procs is not None:
        args.cgroup_procs.write_text(str(os.getpid()))
    if args.cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # kept across exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size_limit, args.file_size_limit))
    if args.address_space_limit is not None:
        limit = args.address_space_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.default_sigint:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"cannot run {command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
