"""The compute floor: ``InferenceSession.run`` called in process, no transport at all."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: Path, device: str) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU or (``device == "cuda"``) the CUDA provider."""
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(model), providers=providers)


def measure(sess: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float) -> dict:
    """Call ``run`` repeatedly for about ``seconds``; per-call percentiles and rates."""
    for _ in range(3):
        sess.run(None, feed)
    times: list[float] = []
    perf = time.perf_counter
    end = perf() + seconds
    while True:
        t0 = perf()
        sess.run(None, feed)
        t1 = perf()
        times.append(t1 - t0)
        if t1 >= end:
            break
    lat = np.asarray(times)
    rows = next(iter(feed.values())).shape[0]
    total = float(lat.sum())
    return {
        "batch": rows,
        "calls": len(lat),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 4),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 4),
        "rps": round(len(lat) / total, 1),
        "rows_per_s": round(len(lat) * rows / total, 1),
    }
