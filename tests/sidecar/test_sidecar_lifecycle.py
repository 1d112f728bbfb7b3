"""The server's life through the CLI, in subprocesses: health NOT_SERVING until warm-up is
done, SIGTERM drains in-flight requests and exits 0, CLI errors, several workers on one
port with merged metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar_helpers import (
    PYTHON,
    ROOT,
    health_status,
    output_array,
    raw_request,
    spawn_sidecar,
    stub,
)

from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models
from modelplane.testing.processes import free_port


@pytest.fixture(scope="module")
def heavy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.save(
        onnx_models.heavy_mlp(), tmp_path_factory.mktemp("heavy") / "heavy.onnx"
    )


@pytest.mark.slow
def test_health_then_drain_on_sigterm(heavy_model: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "sidecar",
            "--model",
            str(heavy_model),
            "--listen",
            f"127.0.0.1:{port}",
            "--device",
            "cpu",
            "--max-batch-size",
            "512",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            # A fresh channel per poll: a refused connection would otherwise back off for a
            # second, long enough to miss the NOT_SERVING phase of a fast load.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as probe:
                try:
                    status = (
                        health_pb2_grpc.HealthStub(probe)
                        .Check(health_pb2.HealthCheckRequest(), timeout=1)
                        .status
                    )
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                except grpc.RpcError as exc:
                    name = exc.code().name
            if not seen or seen[-1] != name:
                seen.append(name)
            if name == "SERVING":
                break
            time.sleep(0.02)
        assert seen[-1] == "SERVING", seen
        assert "NOT_SERVING" in seen, seen
        assert seen.index("NOT_SERVING") < seen.index("SERVING")

        s = stub(port)
        x = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
        results: list[Any] = []

        def call() -> None:
            try:
                resp = s.ModelInfer(raw_request("heavy", {"input": ("FP32", x)}), timeout=60)
                results.append(output_array(resp, 0, np.float32).shape)
            except grpc.RpcError as exc:
                results.append(exc.code())

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert results == [(512, 10)] * 3
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_refuses_cuda_without_gpu(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelplane.cli",
            "sidecar",
            "serve",
            "--model",
            str(model),
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 1
    assert "CUDA" in run.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--max-queue-delay", "5 parsecs"], 2, "max_queue_delay"),
        (["--max-queue-delay", "2s"], 2, "max_queue_delay"),
        (["--listen", "nowhere"], 2, "listen"),
        (["--workers", "zero"], 2, "workers"),
        (["--workers", "65"], 2, "workers must be at most 64"),
        (["--max-batch-size", "0"], 2, "max_batch_size"),
        (["--cuda-mps", "maybe"], 2, "--cuda-mps"),
    ],
)
def test_cli_rejects_bad_settings(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    run = subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == code
    assert needle in run.stderr


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        (["--log-exclude-features", "nosuch"], 2, "UNKNOWN_EXCLUDED_FEATURE"),
        (["--baseline", "{tmp}/missing.parquet"], 2, "INVALID_DATASET"),
        (["--baseline", "{tmp}/train.csv"], 1, "BASELINE_MISMATCH"),
    ],
)
def test_arguments_the_model_refuses_exit_2_and_a_baseline_it_does_not_fit_1(
    tmp_path: Path, args: list[str], code: int, reason: str
) -> None:
    """An argument naming what the model or the disk does not have is a usage error, as a
    bad setting is; a baseline whose columns the model's inputs do not provide fails a check."""
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    header = ",".join(f"x_{i}" for i in range(16)) + ",label"
    (tmp_path / "train.csv").write_text(header + "\n" + ",".join(["0.5"] * 17) + "\n")
    run = subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model),
         "--listen", "127.0.0.1:0", "--log-dir", str(tmp_path / "log"),
         *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == code, run.stderr
    assert f"error: ({reason})" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("name", ["Bad Name!", "deployments/", "deployments/a/b", "x-"])
def test_cli_rejects_a_deployment_id_no_control_plane_would_take(name: str) -> None:
    """Refused at start (exit 2), not retried for ever against INVALID_ARGUMENT."""
    run = subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--control-plane", "127.0.0.1:1",
         "--deployment", name],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "is not a deployment name like fraud or deployments/fraud" in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_missing_model_file(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelplane.cli",
            "sidecar",
            "serve",
            "--model",
            str(tmp_path / "no.onnx"),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 2  # a usage error, not "a check failed"
    assert run.stderr == f"error: --model {tmp_path / 'no.onnx'}: no such file\n"


@pytest.mark.slow
def test_two_workers_share_the_port_and_merge_metrics(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    proc, ready = spawn_sidecar(
        [
            "--model",
            str(model),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--model-name",
            "mlp",
        ]
    )
    try:
        assert ready["workers"] == 2
        assert ready["cuda_mps"] == "off"  # CPU workers: no MPS daemon
        x = np.ones((1, 32), np.float32)
        total = 0
        for _ in range(8):  # fresh channels spread over the workers
            s = stub(ready["port"])
            for _ in range(5):
                s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}))
                total += 1
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{ready['metrics_port']}/metrics", timeout=10)
            .read()
            .decode()
        )
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("modelplane_inference_requests_total{") and 'code="OK"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == total
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("cores", "gpu", "expected"),
    [(2, False, 1), (16, False, 4), (64, False, 8), (2, True, 1), (16, True, 8), (8, True, 4)],
)
def test_auto_workers_follow_cores_and_device(
    monkeypatch: pytest.MonkeyPatch, cores: int, gpu: bool, expected: int
) -> None:
    from sidecar.settings import SidecarSettings

    monkeypatch.setattr("sidecar.settings.available_cores", lambda: cores)
    settings = SidecarSettings(model=Path("m.onnx"), workers="auto")
    assert settings.worker_count(gpu) == expected
    assert SidecarSettings(model=Path("m.onnx"), workers="3").worker_count(gpu) == 3


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [(1, None, 8), (2, None, 4), (16, None, 32), (16, 1.0, 4), (16, 3.5, 8), (1, 0.5, 8)],
)
def test_request_threads_follow_the_cpu_budget(
    monkeypatch: pytest.MonkeyPatch, affinity: int, quota: float | None, expected: int
) -> None:
    from modelplane.server.cpus import CpuBudget
    from sidecar.settings import SidecarSettings

    monkeypatch.setattr("sidecar.settings.process_budget", lambda: CpuBudget(affinity, quota))
    settings = SidecarSettings(model=Path("m.onnx"))
    assert settings.request_threads(waits=False, batching=False) == expected
    # Requests that wait (batching, a sync log) need threads of their own, whatever the cores.
    assert settings.request_threads(waits=False, batching=True) == 64
    assert settings.request_threads(waits=True, batching=False) == 64
    assert (
        SidecarSettings(model=Path("m.onnx"), handler_threads=3).request_threads(
            waits=False, batching=True
        )
        == 3
    )


def test_request_pool_resizes_without_losing_running_work() -> None:
    from sidecar.admission import RequestPool

    pool = RequestPool(8)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    running = pool.submit(slow)
    assert started.wait(10)
    pool.resize(2)
    lock = threading.Lock()
    now = [0, 0]  # running, most at once

    def task() -> None:
        with lock:
            now[0] += 1
            now[1] = max(now[1], now[0])
        time.sleep(0.1)
        with lock:
            now[0] -= 1

    for future in [pool.submit(task) for _ in range(6)]:
        future.result(10)
    # Later work ran two at a time, on the new pool, while the old pool's call still ran.
    assert now[1] == 2
    assert not running.done()
    release.set()
    assert running.result(10).startswith("oip")
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


@pytest.mark.parametrize("young", ["", "5000", "0"])
def test_serving_process_tunes_the_garbage_collector(tmp_path: Path, young: str) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    env = {"MODELPLANE_SIDECAR_GC_YOUNG_THRESHOLD": young} if young else {}
    log = tmp_path / "stderr.log"
    proc, ready = spawn_sidecar(
        ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu"], env, stderr=log
    )
    try:
        x = np.ones((1, 32), np.float32)
        stub(ready["port"]).ModelInfer(raw_request("mlp", {"input": ("FP32", x)}), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    tuned = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if '"garbage collector tuned"' in line
    ]
    if young == "0":
        assert tuned == []  # Python's collector as it was
    else:
        assert len(tuned) == 1
        assert tuned[0]["thresholds"][0] == int(young or 20000)
        # Start-up's objects (modules, the session's Python side) are out of collections.
        assert tuned[0]["frozen_objects"] > 10_000


@pytest.mark.parametrize("limit", ["affinity", "cgroup-quota"])
def test_sidecar_sizes_itself_by_the_cores_it_may_use(tmp_path: Path, limit: str) -> None:
    """Under one core's worth of CPU (on a machine with more), ``auto`` runs one worker and
    one intra-op thread without measuring a multi-threaded session, and says so."""
    import os

    from modelplane.testing import launch
    from modelplane.testing.cgroups import CgroupUnavailable, cpu_quota_group

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU only: a one-core limit changes nothing here")
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    log = tmp_path / "stderr.log"
    args = ["--model", str(model), "--listen", "127.0.0.1:0", "--device", "cpu"]
    args += ["--workers", "auto"]
    with contextlib.ExitStack() as stack:
        if limit == "affinity":
            cpu = min(os.sched_getaffinity(0))
            expected = {"cores": 1, "affinity_cpus": 1, "cgroup_cpu_quota": None}
            limited = launch.prefix(cpus=[cpu])
        else:
            try:
                procs = stack.enter_context(cpu_quota_group(50_000))
            except CgroupUnavailable as exc:
                pytest.skip(str(exc))
            expected = {
                "cores": 1,
                "affinity_cpus": len(os.sched_getaffinity(0)),
                "cgroup_cpu_quota": 0.5,
            }
            limited = launch.prefix(cgroup_procs=procs)

        proc, ready = spawn_sidecar(args, stderr=log, launch=limited)
        try:
            x = np.ones((1, 32), np.float32)
            reply = stub(ready["port"]).ModelInfer(
                raw_request("mlp", {"input": ("FP32", x)}), timeout=10
            )
            assert reply.model_name == "mlp"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    (model_ready,) = [line for line in lines if line["event"] == "model ready"]
    assert model_ready["cpu"] == expected
    # One CPU to run on: 8 request threads; one core's quota spread over several: 4.
    assert model_ready["request_threads"] == (8 if limit == "affinity" else 4)
    assert "intra-op threads: 1, the one core this process may use" in events
    assert "intra-op threads chosen by warm-up" not in events
    # One serving process (on machines of more than two cores, auto would start several).
    assert "workers" not in ready


def test_workers_get_every_setting_of_their_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers rebuild their settings from the environment the supervisor hands them, so a
    # value that differs from its default (None included: a drift test turned off) must
    # survive the trip.
    from sidecar.predlog import PredictionLogSettings
    from sidecar.settings import SidecarSettings
    from sidecar.workers import _worker_env

    settings = SidecarSettings(
        model=tmp_path / "m.onnx",
        listen="127.0.0.1:7000",
        workers="2",
        drift_psi="off",
        drift_ks_pvalue="off",
        drift_chi2_pvalue="off",
        drift_js=0.3,
        max_queue_delay="500us",
        max_batch_size=16,
        drain_seconds="2.5s",
    )
    log_settings = PredictionLogSettings(
        dir=tmp_path / "logs", retention="none", flush_interval="30ms"
    )
    env = _worker_env(settings, 7001, log_settings)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = SidecarSettings()
    want = settings.model_dump(exclude={"listen", "workers", "worker", "metrics_listen"})
    got = worker.model_dump(exclude={"listen", "workers", "worker", "metrics_listen"})
    assert got == want
    assert worker.listen == "127.0.0.1:7001" and worker.worker
    assert PredictionLogSettings().model_dump() == log_settings.model_dump()


def test_a_failure_during_warm_up_is_not_undone_by_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prediction log's disk fails (its writer calls back) before warm-up ends: the
    # sidecar must stay NOT_SERVING, not turn SERVING once the model is loaded.
    import sidecar.server as server
    from sidecar.predlog import PredictionLogSettings
    from sidecar.settings import SidecarSettings

    real_observe = server.observe

    def observe_failing_at_once(*args: Any) -> Any:
        wiring = real_observe(*args)
        args[-1](OSError(27, "File too large"))
        return wiring

    monkeypatch.setattr(server, "observe", observe_failing_at_once)
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    handle = server.start(
        SidecarSettings(
            model=model, listen="127.0.0.1:0", device="cpu", warmup_runs=1, observer_mode="thread"
        ),
        log_settings=PredictionLogSettings(dir=tmp_path / "log"),
    )
    try:
        assert health_status(handle.port) == "NOT_SERVING"
        assert not stub(handle.port).ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        assert handle.failed
    finally:
        handle.stop(0)


def test_sigterm_answers_not_serving_and_serves_through_the_shutdown_delay(
    tmp_path: Path,
) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "sidecar", "--model", str(model), "--listen", f"127.0.0.1:{port}",
         "--device", "cpu", "--shutdown-delay", "2s"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        next(line for line in proc.stdout if "sidecar ready" in line)
        proc.send_signal(signal.SIGTERM)

        def probe() -> str:
            try:
                return health_status(port)
            except grpc.RpcError as exc:
                return str(exc.code().name)

        seen = [probe()]
        deadline = time.monotonic() + 30
        while seen[-1] == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.02)
            seen.append(probe())
        assert seen[-1] == "NOT_SERVING", seen
        # Predictions over a new connection are still answered meanwhile.
        x = np.ones((2, 32), dtype=np.float32)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            from modelplane.oip import grpc_service_pb2_grpc

            reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                raw_request("mlp", {"input": ("FP32", x)}), timeout=10
            )
        assert output_array(reply, 0, np.float32).shape[0] == 2
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_model_input_without_a_declared_shape_is_refused_at_start(tmp_path: Path) -> None:
    """ONNX Runtime shows an input with no shape as it shows a scalar; served as one, every
    tensor the model takes would be refused. A true scalar input is served (see
    test_predlog_non_batch_inputs)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "no-shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "no-shape.onnx"
    onnx.save(model, str(path))
    run = subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(path),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "error: (UNSUPPORTED_MODEL) model input 'x' declares no shape" in run.stderr
