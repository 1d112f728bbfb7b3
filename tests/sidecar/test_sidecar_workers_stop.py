"""Stopping a ``--workers`` supervisor: a SIGTERM during start-up stops the workers started so
far, a worker stuck in its shutdown is killed after the drain period, and a worker that fails
for good (its prediction log's observer process died) stops the whole sidecar with exit 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sidecar_helpers import PYTHON, ROOT, children

from modelplane.testing import onnx_models
from modelplane.testing.processes import alive


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _serve(*args: str, tmpdir: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": tmpdir} if tmpdir else None
    return subprocess.Popen(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--listen", "127.0.0.1:0",
         "--device", "cpu", "--workers", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def _kill_all(sup: subprocess.Popen[str], workers: list[int]) -> None:
    """Kill the supervisor and the workers a test leaves running."""
    if sup.poll() is None:
        sup.kill()
    for pid in workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_while_workers_start_stops_them_and_cleans_up() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    # Managed workers wait for a control plane that is not there: never ready.
    sup = _serve(
        "--control-plane", f"127.0.0.1:{closed}", "--deployment", "fraud",
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    try:
        assert _wait_for(lambda: len(children(sup.pid)) == 2, 60)
        workers = children(sup.pid)
        metrics_dirs = {
            value
            for pid in workers
            for key, _, value in (
                entry.partition("=")
                for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
            )
            if key == "PROMETHEUS_MULTIPROC_DIR"
        }
        assert len(metrics_dirs) == 1
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(60) == 0
        assert _wait_for(lambda: not any(alive(p) for p in workers), 10)
        assert not any(Path(d).exists() for d in metrics_dirs)
    finally:
        if sup.poll() is None:
            sup.kill()


def test_a_worker_stuck_in_shutdown_is_killed_after_the_drain(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    sup = _serve("--model", str(model), "--drain-seconds", "1s")
    try:
        assert sup.stdout is not None
        assert "ready" in json.dumps(next(line for line in sup.stdout if "sidecar ready" in line))
        workers = children(sup.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGSTOP)
        sup.send_signal(signal.SIGTERM)
        # The drain (1 s) and the grace after it (5 s), not forever: TimeoutExpired otherwise.
        sup.wait(30)
        assert _wait_for(lambda: not any(alive(p) for p in workers), 10)
    finally:
        if sup.poll() is None:
            sup.kill()
        for pid in children(sup.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_that_fails_stops_the_sidecar(tmp_path: Path) -> None:
    """One worker NOT_SERVING among serving ones would pass a readiness probe that lands on
    another while its requests are refused: the failed worker stops, and with it the rest."""
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    sup = _serve("--model", str(model), "--log-dir", str(tmp_path / "log"))
    workers: list[int] = []
    try:
        assert sup.stdout is not None
        next(line for line in sup.stdout if "sidecar ready" in line)
        workers = children(sup.pid)
        assert len(workers) == 2
        observers = children(workers[0])
        observer = next(
            pid for pid in observers if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
        )
        os.kill(observer, signal.SIGKILL)
        assert sup.wait(60) == 1
        assert _wait_for(lambda: not any(alive(p) for p in workers), 30)
    finally:
        _kill_all(sup, workers)


def test_the_folders_of_a_killed_managed_supervisor_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed sidecar's workers share a folder of sockets (labels join on every worker) and,
    given no cache or log folder, a temporary artifact cache; after its supervisor was
    killed, the next supervisor's sweep removes the first and the next sidecar's the second."""
    from modelplane.server.supervisor import sweep_stale_dirs
    from sidecar.managed.artifacts import TEMP_CACHE_PREFIX, temporary_cache
    from sidecar.workers import PEERS_DIR_PREFIX

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    # A temporary folder of this test's own (short: sockets go in it), so that the sweeps of
    # sidecars other tests start meanwhile in /tmp do not take these folders first.
    own = tempfile.mkdtemp(prefix="mp-sweep-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", own)
    # Managed workers wait for a control plane that is not there: never ready.
    sup = _serve("--control-plane", f"127.0.0.1:{closed}", "--deployment", "fraud", tmpdir=own)
    workers: list[int] = []
    try:
        assert _wait_for(lambda: len(children(sup.pid)) == 2, 60)
        workers = children(sup.pid)
        environ = Path(f"/proc/{workers[0]}/environ").read_text().split("\0")
        folder = Path(next(e for e in environ if e.startswith("MODELPLANE_SIDECAR_PEERS_DIR="))
                      .partition("=")[2])  # fmt: skip
        assert folder.name.startswith(PEERS_DIR_PREFIX)
        cache = Path(next(e for e in environ if e.startswith("MODELPLANE_SIDECAR_CACHE_DIR="))
                     .partition("=")[2])  # fmt: skip
        assert cache.name.startswith(TEMP_CACHE_PREFIX)
        assert _wait_for(lambda: len(list(folder.glob("*.worker"))) == 2, 60)
        sweep_stale_dirs(PEERS_DIR_PREFIX, "test", str(folder.parent))
        other, remove = temporary_cache()  # another sidecar starting
        remove()
        assert folder.exists() and cache.exists()  # in use: kept
        assert not other.exists()
        sup.kill()
        sup.wait()
        assert _wait_for(lambda: not any(alive(p) for p in workers), 60)
        assert folder.exists()
        assert _wait_for(
            lambda: (
                sweep_stale_dirs(PEERS_DIR_PREFIX, "test", str(folder.parent))
                or not folder.exists()
            ),
            30,
        )
        assert cache.exists()
        other, remove = temporary_cache()
        remove()
        assert not cache.exists()
    finally:
        _kill_all(sup, workers)
        shutil.rmtree(own, ignore_errors=True)


def test_workers_end_with_a_killed_supervisor(tmp_path: Path) -> None:
    from modelplane.server.supervisor import sweep_stale_metrics_dirs

    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    sup = _serve("--model", str(model), "--metrics-listen", "127.0.0.1:0")
    workers: list[int] = []
    try:
        assert sup.stdout is not None
        ready = json.loads(next(line for line in sup.stdout if "sidecar ready" in line))
        workers = children(sup.pid)
        assert len(workers) == 2
        environ = Path(f"/proc/{workers[0]}/environ").read_text().split("\0")
        metrics_dir = Path(next(e for e in environ if e.startswith("PROMETHEUS_MULTIPROC_DIR=")
                                ).partition("=")[2])  # fmt: skip
        sup.kill()  # nothing forwards a signal: the workers must notice by themselves
        sup.wait()
        assert _wait_for(lambda: not any(alive(p) for p in workers), 60)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", ready["port"])) != 0
        # The folder goes at the next supervisor's start; a worker shown dead (its main thread
        # a zombie) may hold the folder's lock until its last thread has exited.
        assert _wait_for(lambda: sweep_stale_metrics_dirs() or not metrics_dir.exists(), 30)
    finally:
        _kill_all(sup, workers)


_WATCHED = """
import os, signal, sys, time
from modelplane.server.supervisor import watch_parent
signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1], "w").write("drained"), os._exit(0)))
watch_parent(os.getppid(), interval=0.05)
print("watching", flush=True)
time.sleep(600)
"""


def test_without_a_parent_death_signal_a_worker_notices_its_parent_died(tmp_path: Path) -> None:
    # The portable fallback of PR_SET_PDEATHSIG: a thread watching the parent pid.
    marker = tmp_path / "drained"
    parent = subprocess.Popen(
        [PYTHON, "-c",
         "import subprocess, sys, time\n"
         f"c = subprocess.Popen([sys.executable, '-c', {_WATCHED!r}, {str(marker)!r}],"
         " stdout=subprocess.PIPE, text=True)\n"
         "c.stdout.readline()\n"
         "print(c.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not alive(child), 60)
        assert marker.read_text() == "drained"  # it ended through its SIGTERM handler
    finally:
        if parent.poll() is None:
            parent.kill()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
