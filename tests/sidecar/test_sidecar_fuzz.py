"""A seeded fuzzer: thousands of randomly corrupted requests, each answered with a client
error and an ErrorInfo reason (never INTERNAL or UNKNOWN, never a dropped connection),
while valid requests sent between them keep getting correct answers."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzing import Vocabulary, drive
from sidecar_helpers import health_status, output_array, raw_request

from sidecar.predlog import PredictionLogSettings, read_logs

WORDS = Vocabulary("two", ("a", "b"), ("total", "square"))


def _valid(rng: random.Random) -> tuple[Any, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    n = rng.randint(1, 4)
    a = np.array([[rng.uniform(-5, 5) for _ in range(4)] for _ in range(n)], np.float32)
    b = np.array([[rng.randint(-99, 99) for _ in range(2)] for _ in range(n)], np.int64)
    return raw_request("two", {"a": ("FP32", a), "b": ("INT64", b)}), (a, b)


def _right(sent: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], resp: Any) -> bool:
    a, b = sent
    return bool(
        np.allclose(output_array(resp, 0, np.float32)[:, 0], a.sum(axis=1), atol=1e-4)
        and np.array_equal(output_array(resp, 1, np.int64), b * b)
    )


def _fuzz(handle: Any, count: int, seed: int) -> None:
    drive(handle.port, count, seed, _valid, _right, WORDS)


@pytest.mark.parametrize("batching", [1, 32])
def test_fuzzed_requests_never_break_the_server(
    model_dir: Path, sidecar_factory: Any, batching: int
) -> None:
    handle = sidecar_factory(
        model_dir / "two.onnx", max_batch_size=batching, max_request_rows=1000, log_level="error"
    )
    _fuzz(handle, 1200, seed=batching)


@pytest.mark.soak
def test_fuzz_soak(model_dir: Path, sidecar_factory: Any) -> None:
    # Reduced by default; MODELPLANE_SOAK_REQUESTS=40000 gives the full soak.
    count = int(os.environ.get("MODELPLANE_SOAK_REQUESTS", "6000"))
    handle = sidecar_factory(model_dir / "two.onnx", max_batch_size=32, max_queue_delay=0.001)
    _fuzz(handle, count, seed=99)


def test_fuzzed_requests_with_the_prediction_log_on(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    """Refusals are logged too (their features as far as they decoded): damaged requests must
    not break the log's process or leave an unreadable file."""
    log_dir = tmp_path / "log"
    handle = sidecar_factory(
        model_dir / "two.onnx",
        max_batch_size=32,
        max_request_rows=1000,
        log_level="error",
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05),
    )
    assert handle.observer_process is not None
    _fuzz(handle, 1200, seed=7)
    assert health_status(handle.port) == "SERVING"
    handle.stop(5)
    codes = set(read_logs(log_dir).column("status_code").to_pylist())
    assert {"OK", "INVALID_ARGUMENT"} <= codes, codes
