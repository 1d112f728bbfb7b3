"""``--workers N``: one sidecar gives one readiness answer. Health is answered per connection
and the kernel spreads connections over the workers, so a worker that is warm stays
NOT_SERVING until its supervisor has seen every worker ready, and the supervisor prints its
ready line only once each says SERVING. ``--workers auto`` counts for the GPU only when the
sidecar may use one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar_helpers import PYTHON, ROOT, children

from modelplane.testing import onnx_models
from modelplane.testing.processes import alive, free_port


def _health(port: int) -> str | None:
    """The health status on a fresh connection (as a Kubernetes probe makes), None when the
    connection got no answer (it reached a worker that is paused)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.slow
def test_no_connection_says_serving_before_every_worker_is_ready(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    port = free_port()
    err = tmp_path / "stderr.log"
    with err.open("w") as stderr:
        sup = subprocess.Popen(
            [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model),
             "--listen", f"127.0.0.1:{port}", "--device", "cpu", "--workers", "2"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
        )  # fmt: skip
    announced = threading.Event()

    def read_stdout() -> None:
        assert sup.stdout is not None
        for line in sup.stdout:
            if '"sidecar ready"' in line:
                announced.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    workers: list[int] = []
    slow = 0
    try:
        assert _wait_for(lambda: len(children(sup.pid)) == 2, 60)
        workers = children(sup.pid)
        slow = max(workers)  # the later one: still starting Python
        os.kill(slow, signal.SIGSTOP)  # a worker whose warm-up takes longer

        def warm() -> bool:
            lines = [json.loads(x) for x in err.read_text().splitlines() if x.startswith("{")]
            return any(x.get("event") == "model ready" for x in lines)

        assert _wait_for(warm, 90), err.read_text()[-2000:]
        answers = [_health(port) for _ in range(20)]
        assert not announced.is_set()
        assert "SERVING" not in answers, answers
        assert answers.count("NOT_SERVING") >= 10, answers

        os.kill(slow, signal.SIGCONT)
        assert announced.wait(90), err.read_text()[-2000:]
        # The ready line comes once every worker says SERVING: no probe after it fails.
        answers = [_health(port) for _ in range(20)]
        assert answers == ["SERVING"] * 20, answers
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(60) == 0
    finally:
        if slow and alive(slow):
            os.kill(slow, signal.SIGCONT)
        if sup.poll() is None:
            sup.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


_WORKER = """
import os, signal, sys, time
from modelplane.server.supervisor import hold_until_all_ready
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
folder = os.environ["TEST_FOLDER"]
try:  # the first worker holds its health, the other does not (as a control plane's)
    os.close(os.open(os.path.join(folder, "first"), os.O_CREAT | os.O_EXCL))
except FileExistsError:
    pass
else:
    def release():
        time.sleep(0.5)  # the supervisor must wait for it
        open(os.path.join(folder, "released"), "w").close()
    assert hold_until_all_ready(release)
print("worker ready", flush=True)
time.sleep(60)
"""

_SUPERVISOR = """
import os, signal, sys
from modelplane.server.supervisor import supervise
folder = sys.argv[1]
def on_ready(_port):
    print("released" if os.path.exists(os.path.join(folder, "released")) else "early", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
env = {**os.environ, "PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "TEST_FOLDER": folder}
sys.exit(supervise(module="heldworker", env=env, count=2, ready_marker="worker ready",
                   on_ready=on_ready))
"""


def test_the_supervisor_announces_once_holding_workers_serve(tmp_path: Path) -> None:
    (tmp_path / "heldworker.py").write_text(_WORKER)
    out = subprocess.run(
        [PYTHON, "-c", _SUPERVISOR, str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["released"], out.stderr[-2000:]
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_held_handle_says_serving_only_once_released() -> None:
    from concurrent import futures

    from modelplane.server.lifecycle import GrpcServerHandle, add_health_and_reflection, add_port

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health = add_health_and_reflection(server, ["svc"])
    port = add_port(server, "127.0.0.1:0")
    server.start()
    handle = GrpcServerHandle(server, port, health, ["svc"], 0.0)
    try:
        handle.hold_serving()
        handle.mark_serving()
        assert _health(port) == "NOT_SERVING"
        handle.release_serving()
        assert _health(port) == "SERVING"

        handle.hold_serving()
        handle.mark_not_serving()  # a failure while held is not undone by the release
        handle.release_serving()
        assert _health(port) == "NOT_SERVING"

        handle.mark_serving()
        handle.stop(0)
        handle.release_serving()
        handle.mark_serving()
        assert handle.health.Check(health_pb2.HealthCheckRequest(), None).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
    finally:
        server.stop(0)


@pytest.mark.parametrize(("device", "expected"), [("cpu", 4), ("cuda", 8), ("auto", 8)])
def test_auto_workers_on_a_gpu_host_count_for_the_gpu_only_when_it_may_be_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, device: str, expected: int
) -> None:
    """``auto`` counts for the GPU too: warm-up, which may pick the CPU, comes after."""
    import modelplane.cli as cli

    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    counted: list[int] = []

    def supervise(_settings: Any, count: int, _log_settings: Any = None) -> int:
        counted.append(count)
        return 0

    monkeypatch.setattr("sidecar.settings.available_cores", lambda: 16)
    monkeypatch.setattr("sidecar.cuda.gpu_present", lambda: True)
    monkeypatch.setattr("sidecar.workers.supervise", supervise)
    monkeypatch.setattr("modelplane.server.logging.configure_logging", lambda _level: None)
    args = ["sidecar", "serve", "--model", str(model), "--listen", "127.0.0.1:0"]
    assert cli.main([*args, "--device", device, "--workers", "auto"]) == 0
    assert counted == [expected]
