"""The compute floor: ``InferenceSession.run`` called in process, no transport at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: Path, device: str, cuda_options: dict | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU or (``device == "cuda"``) the CUDA provider, with
    ``cuda_options`` (ONNX Runtime's defaults when None)."""
    providers: list = ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers.insert(0, ("CUDAExecutionProvider", cuda_options or {}))
    sess = ort.InferenceSession(str(model), providers=providers)
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime lists the provider whenever the wheel has it, and falls back to the CPU
        # when it cannot load it: timings under a CUDA label would be the CPU's.
        raise SystemExit(
            "no usable CUDA GPU: ONNX Runtime's CUDA provider did not load (no GPU, or no CUDA "
            f"libraries; the session got {sess.get_providers()}); --device cpu runs the "
            "procedure without one"
        )
    return sess


def _timed(call: Callable[[], object], rows: int, seconds: float) -> dict:
    """Call ``call`` three times, then repeatedly for about ``seconds``: percentiles, rates."""
    for _ in range(3):
        call()
    times: list[float] = []
    perf = time.perf_counter
    end = perf() + seconds
    while True:
        t0 = perf()
        call()
        t1 = perf()
        times.append(t1 - t0)
        if t1 >= end:
            break
    lat = np.asarray(times)
    total = float(lat.sum())
    return {
        "batch": rows,
        "calls": len(lat),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 4),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 4),
        "rps": round(len(lat) / total, 1),
        "rows_per_s": round(len(lat) * rows / total, 1),
    }


def measure(sess: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float) -> dict:
    """Call ``run`` (numpy in and out) repeatedly for about ``seconds``."""
    rows = next(iter(feed.values())).shape[0]
    return _timed(lambda: sess.run(None, feed), rows, seconds)


def measure_bound(
    sess: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float, *, resident: bool
) -> dict:
    """Like :func:`measure` through an ``IOBinding`` on the CUDA device.

    ``resident``: the input is copied to the GPU once and the outputs stay there (the compute
    alone); otherwise every call copies the input from host memory and the outputs back, as a
    server must.
    """
    binding = sess.io_binding()
    outputs = [o.name for o in sess.get_outputs()]
    placed = {name: ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for name, x in feed.items()}

    def call() -> None:
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, x in feed.items():
            value = placed[name] if resident else ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cuda", 0)
        sess.run_with_iobinding(binding)
        if not resident:
            binding.copy_outputs_to_cpu()

    return _timed(call, next(iter(feed.values())).shape[0], seconds)
