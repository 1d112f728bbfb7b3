"""The sidecar on a real GPU: ``--device cuda`` and ``auto``, batching and workers on CUDA.

These run only where ONNX Runtime has the CUDA execution provider and an NVIDIA GPU is present
(``onnxruntime-gpu`` on a GPU machine); elsewhere they skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sidecar_helpers import output_array, raw_request, spawn_sidecar, stub

from modelplane.testing import onnx_models
from modelplane.testing.processes import free_port
from sidecar.cuda import gpu_present

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not gpu_present(),
        reason="no NVIDIA GPU with ONNX Runtime's CUDA execution provider on this machine",
    ),
]


def _cpu_answer(model: Path, name: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]  # type: ignore[no-any-return]


def _rel_error(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> float:
    diff = np.linalg.norm(got.astype(np.float64) - want.astype(np.float64))
    return float(diff / np.linalg.norm(want.astype(np.float64)))


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _providers(text: str) -> set[str]:
    return set(re.findall(r'modelplane_inference_model_info\{[^}]*provider="([^"]+)"', text))


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.save(onnx_models.heavy_mlp(), tmp_path_factory.mktemp("cuda") / "h.onnx")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.save(onnx_models.resnet50(), tmp_path_factory.mktemp("cuda") / "r.onnx")


def _serve(model: Path, *flags: str) -> tuple[Any, dict[str, Any], int]:
    port, metrics = free_port(), free_port()
    proc, ready = spawn_sidecar(
        [
            "--model",
            str(model),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{metrics}",
            *flags,
        ],
        timeout=240,
    )
    return proc, ready, metrics


def _stop(proc: Any) -> None:
    proc.terminate()
    assert proc.wait(60) == 0


def test_device_cuda_runs_on_the_gpu_and_matches_the_cpu(heavy: Path) -> None:
    proc, ready, metrics = _serve(heavy, "--device", "cuda", "--max-batch-size", "1")
    try:
        assert ready["provider"] == "CUDAExecutionProvider"
        x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
        reply = stub(ready["port"]).ModelInfer(raw_request("h", {"input": ("FP32", x)}), timeout=60)
        got = output_array(reply, 0, np.float32)
        # TF32 matrix units may be on: compare by relative norm, not elementwise.
        assert _rel_error(got, _cpu_answer(heavy, "input", x)) < 1e-2
        assert _providers(_metrics(metrics)) == {"CUDAExecutionProvider"}
    finally:
        _stop(proc)


def test_device_auto_keeps_a_small_tabular_model_on_the_cpu(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    proc, ready, metrics = _serve(model, "--device", "auto")
    try:
        assert ready["provider"] == "CPUExecutionProvider"
        assert _providers(_metrics(metrics)) == {"CPUExecutionProvider"}
    finally:
        _stop(proc)


def test_device_auto_moves_an_image_model_to_the_gpu(resnet: Path) -> None:
    proc, ready, _ = _serve(resnet, "--device", "auto", "--max-batch-size", "8")
    try:
        assert ready["provider"] == "CUDAExecutionProvider"
    finally:
        _stop(proc)


def test_each_cuda_batch_size_runs_on_a_session_of_its_own(resnet: Path) -> None:
    from sidecar import cuda
    from sidecar.runtime import load

    runtime = load(resnet, "cuda", intra_op_threads=0, warmup_runs=1, batch_rows=8)
    try:
        assert runtime.buckets == (1, 2, 4, 8)
        sessions = [runtime.sessions_by_rows[rows] for rows in runtime.buckets]
        assert len({id(s) for s in sessions}) == 4
        assert {s.get_providers()[0] for s in sessions} == {"CUDAExecutionProvider"}
        images = np.random.default_rng(2).standard_normal((7, 3, 224, 224)).astype(np.float32)
        want = _cpu_answer(resnet, "image", images)
        names = runtime.signature.output_names
        for rows in (3, 1, 7, 2, 5):  # alternating sizes, padded to 4, 1, 8, 2, 8
            got = runtime.run(names, {"image": images[:rows]})[0]
            assert got.shape[0] == rows
            assert _rel_error(got, want[:rows]) < 1e-2
        # Several requests' rows go straight into the page-locked staging buffer.
        parts = {"image": [images[:2], images[2:5], images[5:6]]}
        outs, kept = runtime.run_rows(names, parts, keep_inputs=True)
        assert _rel_error(outs[0], want[:6]) < 1e-2
        np.testing.assert_array_equal(kept["image"], images[:6])
        staging = runtime._staging
        assert staging is not None and staging.pin and len(staging._pinned) == 1
        assert cuda.shared_arena()  # the sessions above ran on one shared arena
    finally:
        runtime.close()
    assert runtime._gpu_thread is not None
    runtime._gpu_thread.shutdown(wait=True)
    assert staging._pinned == []  # unlocked once the session's thread is done


#: Run in a process of its own (the arena is registered once per process): load ResNet-50 with a
#: session per batch size up to 64 and print the GPU memory that took, from cudaMemGetInfo.
_MEMORY_PROBE = """
import ctypes, json, sys
from pathlib import Path
from sidecar import cuda, runtime
cuda.preload()
cudart = cuda.cudart()
free, total = ctypes.c_size_t(), ctypes.c_size_t()
cudart.cudaFree(ctypes.c_void_p(0))
cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
before = free.value
rt = runtime.load(Path(sys.argv[1]), "cuda", intra_op_threads=0, warmup_runs=1, batch_rows=64)
cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
print(json.dumps({"used": before - free.value, "shared": cuda.shared_arena(),
                  "sessions": len(rt.sessions_by_rows)}))
"""


def test_the_sessions_of_each_batch_size_share_one_memory_arena(resnet: Path) -> None:
    used = {}
    for flag in ("1", "0"):
        env = {**os.environ, "MODELPLANE_CUDA_SHARED_ARENA": flag}
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(resnet)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        line = json.loads(done.stdout.strip().splitlines()[-1])
        assert line["shared"] is (flag == "1") and line["sessions"] == 7
        used[flag] = line["used"]
    print(json.dumps({"gpu_bytes_shared_arena": used["1"], "gpu_bytes_own_arenas": used["0"]}))
    assert used["1"] < 0.9 * used["0"], used


def test_batched_cuda_answers_belong_to_their_own_requests(resnet: Path) -> None:
    proc, ready, metrics = _serve(
        resnet, "--device", "cuda", "--max-batch-size", "16", "--max-queue-delay", "5ms"
    )
    images = np.random.default_rng(1).standard_normal((24, 3, 224, 224)).astype(np.float32)
    want = _cpu_answer(resnet, "image", images)
    got: dict[int, np.ndarray[Any, Any]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            reply = stub(ready["port"]).ModelInfer(
                raw_request("r", {"image": ("FP32", images[i : i + 1])}), timeout=120
            )
            got[i] = output_array(reply, 0, np.float32)[0]
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for i in range(len(images)):
            # Each answer is its own image's: far closer to it than to any other image's.
            errs = [_rel_error(got[i], want[j]) for j in range(len(images))]
            assert int(np.argmin(errs)) == i and errs[i] < 1e-2, (i, errs[i])
        text = _metrics(metrics)
        count = re.search(r"^modelplane_inference_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
        assert count is not None and float(count.group(1)) < len(images), "no batch formed"
    finally:
        _stop(proc)


def test_cuda_workers_each_serve(heavy: Path) -> None:
    proc, ready, metrics = _serve(heavy, "--device", "cuda", "--workers", "2")
    try:
        assert ready["workers"] == 2
        # Three rows: the GPU session pads them to its batch size of four and drops the extra.
        x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
        want = _cpu_answer(heavy, "input", x)
        for _ in range(8):  # fresh channels: SO_REUSEPORT spreads them over the workers
            reply = stub(ready["port"]).ModelInfer(
                raw_request("h", {"input": ("FP32", x)}), timeout=60
            )
            assert _rel_error(output_array(reply, 0, np.float32), want) < 1e-2
        assert _providers(_metrics(metrics)) == {"CUDAExecutionProvider"}
    finally:
        _stop(proc)


def _mps_processes() -> list[str]:
    """Names of the MPS processes running on this machine (the control daemon and, once a
    client connected, its server); ``comm`` keeps 15 characters: both read ``nvidia-cuda-mps``."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue  # the process ended meanwhile
        if name.startswith("nvidia-cuda-mps"):
            names.append(name)
    return names


def _mps_gone(timeout: float = 20.0) -> bool:
    """Wait until no MPS process runs (a sidecar that just stopped may still be quitting its
    daemon); whether none does."""
    deadline = time.monotonic() + timeout
    while _mps_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _mps_processes()


def test_cuda_workers_share_one_private_mps_server(heavy: Path) -> None:
    if not _mps_gone():
        pytest.skip("an MPS daemon already runs on this machine")
    proc, ready, metrics = _serve(heavy, "--device", "cuda", "--workers", "2", "--cuda-mps", "on")
    try:
        assert ready["cuda_mps"] == "private"
        x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
        want = _cpu_answer(heavy, "input", x)
        for _ in range(8):  # fresh channels: both workers answer through the MPS server
            reply = stub(ready["port"]).ModelInfer(
                raw_request("h", {"input": ("FP32", x)}), timeout=60
            )
            assert _rel_error(output_array(reply, 0, np.float32), want) < 1e-2
        running = _mps_processes()
        assert len(running) == 2, running  # the private control daemon and its server
        assert _providers(_metrics(metrics)) == {"CUDAExecutionProvider"}
    finally:
        _stop(proc)
    # The sidecar told its private daemon to quit once the workers had exited.
    assert _mps_gone(), _mps_processes()
