"""Start and stop the servers under test, each in its own process (and process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MLSERVER_BIN = ROOT / ".venv-peers" / "mlserver" / "bin" / "mlserver"
MLSERVER_RUNTIME = BENCH_DIR / "mlserver_runtime"


def python() -> str:
    """The interpreter of our environment (the one running the bench when .venv is absent)."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for our helper processes: ``bench/`` importable, no stray threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for servers that must not see ``bench/`` on their import path (other
    ``PYTHONPATH`` entries, such as a folder of extra packages, stay)."""
    env = dict(os.environ)
    kept = [
        p
        for p in env.pop("PYTHONPATH", "").split(os.pathsep)
        if p and Path(p).resolve() != BENCH_DIR
    ]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """A server started in its own process group, with its output in a log file."""

    name: str
    argv: Sequence[str]
    log: Path
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Launch the process."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The process id, which is also its process group id (0 before start)."""
        return self.proc.pid if self.proc is not None else 0

    def check_alive(self) -> None:
        """Raise with the end of the log when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        """The last lines the server printed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after a grace period."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(pgid, signal.SIGTERM)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


def echo_server(kind: str, port: int, response: Path, workdir: Path) -> ServerProcess:
    """A bare echo server (``threads`` or ``aio``) answering with the bytes in ``response``."""
    argv = [python(), "-m", "sidecar_tools.echo_server", "--kind", kind]
    argv += ["--listen", f"127.0.0.1:{port}", "--response", str(response)]
    return ServerProcess(f"echo-{kind}", argv, workdir / f"echo-{kind}.log", bench_env(), workdir)


def sidecar_server(
    name: str,
    base: Sequence[str],
    model: Path,
    port: int,
    flags: Sequence[str],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """The sidecar on ``model`` with extra command-line ``flags`` and ``env`` variables."""
    argv = [*base, "--model", str(model), "--listen", f"127.0.0.1:{port}", *flags]
    return ServerProcess(name, argv, workdir / f"{name}.log", clean_env(**(env or {})), workdir)


def mlserver_server(
    name: str, model_name: str, model: Path, port: int, settings: dict, workdir: Path
) -> ServerProcess:
    """MLServer 1.7.1 (its own environment) serving ``model`` through our ONNX runtime."""
    repo = workdir / name
    (repo / model_name).mkdir(parents=True, exist_ok=True)
    full = {
        "http_port": free_port(),
        "grpc_port": port,
        "metrics_port": free_port(),
        "host": "127.0.0.1",
        "metrics_dir": str(repo / ".metrics"),
        "environments_dir": str(repo / ".envs"),
        **settings,
    }
    (repo / "settings.json").write_text(json.dumps(full, indent=2))
    model_settings = {
        "name": model_name,
        "implementation": "onnx_runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(model)},
    }
    (repo / model_name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = clean_env(PYTHONPATH=str(MLSERVER_RUNTIME))
    argv = [str(MLSERVER_BIN), "start", str(repo)]
    return ServerProcess(name, argv, workdir / f"{name}.log", env, repo)


def sidecar_base_command() -> tuple[list[str] | None, str]:
    """How to start the sidecar here, and its ``--help`` text; ``None`` and why if it can't."""
    py = python()
    modelplane = str(Path(py).parent / "modelplane")
    candidates = [[py, "-m", "modelplane.cli", "sidecar", "serve"], [py, "-m", "sidecar"]]
    if Path(modelplane).exists():
        candidates.insert(0, [modelplane, "sidecar", "serve"])
    reasons = []
    for base in candidates:
        try:
            done = subprocess.run(
                [*base, "--help"], capture_output=True, text=True, timeout=60, env=clean_env()
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            reasons.append(f"{' '.join(base[-3:])}: {err}")
            continue
        if done.returncode == 0 and "--model" in done.stdout and "--listen" in done.stdout:
            return base, done.stdout
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no --model/--listen"]
        shown = " ".join([Path(base[0]).name, *base[1:]])
        reasons.append(f"`{shown}`: {last[0]}")
    return None, "; ".join(reasons)
