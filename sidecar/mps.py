"""CUDA MPS for ``--workers N`` on one GPU: the workers' kernels share one GPU context.

Without the Multi-Process Service every worker process holds a CUDA context of its own and the
GPU time-slices between them: one worker's small batch never runs beside another's, and each
session call waits for the others' time slices (bench/README.md, "Several workers on one GPU:
CUDA MPS"). Through
an MPS server the workers' work runs side by side, as threads of one process would.

``--cuda-mps`` (``cuda_mps``):

- ``auto`` (default): with more than one worker on a GPU, use the MPS daemon the environment
  already names (``CUDA_MPS_PIPE_DIRECTORY``, as the NVIDIA device plugin's MPS sharing sets
  it); else start a private one for this sidecar's workers when ``nvidia-cuda-mps-control`` is
  installed; else run without, saying why in the log.
- ``on``: the same, but the sidecar does not start when no daemon can be had.
- ``off``: never.

A private daemon keeps its pipes and logs in a temporary folder, is started before the workers
(their CUDA contexts must be created through it) and told to quit after they have exited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from modelplane.errors import FailedPrecondition

log = structlog.get_logger("modelplane.sidecar.mps")

Mps = Literal["auto", "on", "off"]

CONTROL = "nvidia-cuda-mps-control"
#: Where NVIDIA's container images put the driver's tools when they are not on ``PATH``.
_DRIVER_BIN = "/usr/local/nvidia/bin"
PIPE_VAR = "CUDA_MPS_PIPE_DIRECTORY"
LOG_VAR = "CUDA_MPS_LOG_DIRECTORY"


def find_control() -> str | None:
    """The MPS control program, or None when it is not installed."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + _DRIVER_BIN
    return shutil.which(CONTROL, path=path)


@dataclass
class PrivateMps:
    """An MPS control daemon started for one sidecar's workers."""

    control: str
    folder: Path

    @property
    def env(self) -> dict[str, str]:
        """What the workers' environment needs to reach this daemon."""
        return {PIPE_VAR: str(self.folder / "pipe"), LOG_VAR: str(self.folder / "log")}

    def ask(self, command: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Send one command to the daemon."""
        return subprocess.run(
            [self.control],
            input=command + "\n",
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Tell the daemon (and its server) to quit, then remove its folder."""
        try:
            self.ask("quit", timeout=30.0)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("the private MPS daemon did not take quit", error=str(exc))
        shutil.rmtree(self.folder, ignore_errors=True)


def start_private(control: str, timeout: float = 10.0) -> PrivateMps:
    """Start a control daemon with its own pipe and log folders; raises OSError if it does
    not answer within ``timeout`` seconds."""
    folder = Path(tempfile.mkdtemp(prefix="modelplane-mps-"))
    daemon = PrivateMps(control, folder)
    for sub in ("pipe", "log"):
        (folder / sub).mkdir()
    try:
        started = subprocess.run(
            [control, "-d"],
            env={**os.environ, **daemon.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if started.returncode != 0:
            why = (started.stderr or started.stdout).strip() or f"exit code {started.returncode}"
            raise OSError(f"{control} -d failed: {why}")
        deadline = time.monotonic() + timeout
        while True:
            answer = daemon.ask("get_server_list", timeout=timeout)
            if answer.returncode == 0:
                return daemon
            if time.monotonic() > deadline:
                why = (answer.stderr or answer.stdout).strip() or f"exit code {answer.returncode}"
                raise OSError(f"the MPS daemon does not answer: {why}")
            time.sleep(0.1)
    except (OSError, subprocess.SubprocessError) as exc:
        daemon.stop()
        raise OSError(str(exc)) from None


def for_workers(setting: Mps, on_gpu: bool, count: int) -> tuple[PrivateMps | None, str]:
    """Arrange MPS for ``count`` workers; returns the private daemon to stop afterwards (or
    None) and what the workers use: ``private``, ``external`` or ``off``.

    Raises FailedPrecondition (``CUDA_MPS_UNAVAILABLE``) under ``on`` when none can be had.
    """
    if setting == "off" or count < 2 or not on_gpu:
        return None, "off"
    if os.environ.get(PIPE_VAR):
        log.info("workers use the MPS daemon the environment names", pipe=os.environ[PIPE_VAR])
        return None, "external"
    control = find_control()
    why = f"{CONTROL} is not installed (not on PATH nor in {_DRIVER_BIN})"
    if control is not None:
        try:
            daemon = start_private(control)
        except OSError as exc:
            why = f"the private MPS daemon did not start: {exc}"
        else:
            log.info("started a private MPS daemon for the workers", folder=str(daemon.folder))
            return daemon, "private"
    if setting == "on":
        raise FailedPrecondition(
            f"--cuda-mps on, but {why}; install the NVIDIA driver's MPS tools, point "
            f"{PIPE_VAR} at a running daemon, or use --cuda-mps auto|off",
            reason="CUDA_MPS_UNAVAILABLE",
        )
    log.warning("workers share the GPU without MPS (time-sliced)", why=why)
    return None, "off"
