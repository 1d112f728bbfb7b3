"""Servers as real processes for end-to-end tests and benchmarks: a control plane and managed
sidecars started exactly as the CLI starts them (``python -m modelplane.cli ...``), so that a
caller can kill one outright and start it again on the same database.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane.testing.health import wait_serving


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Each live process's pid and the fields of its ``/proc/PID/stat`` after the command name
    (state, ppid, pgrp, ..., utime at index 11, stime at 12); nothing without ``/proc``."""
    if not os.path.isdir("/proc"):
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        yield int(entry), fields


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


_PICK = random.SystemRandom()  # not seeded alike in forked test workers


def _ephemeral_low() -> int:
    """The first port of the range the kernel hands out to outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback port nobody listens on right now, for a server started a moment later.

    Chosen below the kernel's ephemeral range where there is room: a port from that range
    (what binding port 0 gives) can be taken in the meantime as the source port of any
    outgoing connection on the machine, which makes the server's bind fail."""
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(64):
            port = _PICK.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process, its address and its log file."""

    argv: list[str]
    address: str
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Server:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()
        try:
            wait_serving(self.address, timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            command = self.argv[self.argv.index("modelplane.cli") + 1 :][:2]
            raise AssertionError(f"{command} did not start: {exc}\n{self.tail()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crashed control plane)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def json_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines the server has written so far."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [json.loads(x) for x in text.splitlines() if x.startswith("{")]

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def controlplane(
    tmp: Path,
    db_url: str,
    *,
    name: str = "cp",
    port: int = 0,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = (),
) -> Server:
    """A control plane (not yet started) on ``db_url`` sharing ``tmp/artifacts``; ``extra``
    adds ``controlplane serve`` options, ``env`` ``MODELPLANE_`` settings, ``launcher`` a
    command it runs under (:func:`modelplane.testing.launch.prefix`, for limits)."""
    address = f"127.0.0.1:{port or free_port()}"
    argv = [
        *launcher,
        sys.executable,
        "-m",
        "modelplane.cli",
        "controlplane",
        "serve",
        "--listen",
        address,
        "--db",
        db_url,
        "--artifact-root",
        str(tmp / "artifacts"),
        "--log-level",
        "info",
        *extra,
    ]
    return Server(argv, address, tmp / f"{name}.log", _env(**(env or {})))


def sidecar(
    tmp: Path, control_plane: str, deployment: str, *, name: str, extra: tuple[str, ...] = ()
) -> Server:
    """A managed sidecar (not yet started) following ``deployment``, logging predictions under
    ``tmp/name/log``; ``extra`` adds ``sidecar serve`` options."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "modelplane.cli",
        "sidecar",
        "serve",
        "--control-plane",
        control_plane,
        "--deployment",
        deployment,
        "--listen",
        address,
        "--log-dir",
        str(tmp / name / "log"),
        *extra,
    ]
    return Server(argv, address, tmp / f"{name}.log", _env())
