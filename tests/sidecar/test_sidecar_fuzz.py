"""A seeded fuzzer: thousands of randomly corrupted requests, each answered with a client
error and an ErrorInfo reason (never INTERNAL or UNKNOWN, never a dropped connection),
while valid requests sent between them keep getting correct answers."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sidecar_helpers import output_array, raw_request, stub

from modelplane.errors import error_info

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = [
    "BOOL",
    "INT8",
    "INT32",
    "INT64",
    "UINT8",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "",
    "X",
]


def _valid(rng: random.Random) -> tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    n = rng.randint(1, 4)
    a = np.array([[rng.uniform(-5, 5) for _ in range(4)] for _ in range(n)], np.float32)
    b = np.array([[rng.randint(-99, 99) for _ in range(2)] for _ in range(n)], np.int64)
    return raw_request("two", {"a": ("FP32", a), "b": ("INT64", b)}), a, b


def _corrupt(rng: random.Random, req: Any) -> bytes:
    """Apply one to three random structural mutations, sometimes byte-level damage too."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(14)
        inp = req.inputs[rng.randrange(len(req.inputs))] if req.inputs else None
        if kind == 0 and inp is not None:
            inp.datatype = rng.choice(DATATYPES)
        elif kind == 1 and inp is not None:
            del inp.shape[:]
            inp.shape.extend(
                rng.choice([-1, 0, 1, 2, 3, 4, 2**31, 2**62]) for _ in range(rng.randint(0, 4))
            )
        elif kind == 2 and req.raw_input_contents:
            i = rng.randrange(len(req.raw_input_contents))
            data = req.raw_input_contents[i]
            cut = rng.randint(0, len(data))
            req.raw_input_contents[i] = (
                data[:cut] if rng.random() < 0.5 else data + os.urandom(cut % 9 + 1)
            )
        elif kind == 3:
            req.raw_input_contents.append(os.urandom(rng.randint(0, 16)))
        elif kind == 4 and req.raw_input_contents:
            req.raw_input_contents.pop()
        elif kind == 5 and inp is not None:
            inp.name = rng.choice(["a", "b", "c", "", "a\x00"])
        elif kind == 6 and inp is not None:
            inp.contents.fp32_contents.extend([1.0] * rng.randint(0, 8))
            inp.contents.int64_contents.extend([1] * rng.randint(0, 3))
        elif kind == 7:
            req.outputs.add(name=rng.choice(["total", "square", "nope", ""]))
        elif kind == 8:
            key = rng.choice(["priority", "timeout", "x", "classification", "binary_data_output"])
            param = req.parameters[key]
            choice = rng.randrange(4)
            if choice == 0:
                param.string_param = "v"
            elif choice == 1:
                param.int64_param = rng.randint(-5, 5)
            elif choice == 2:
                param.bool_param = True
        elif kind == 9:
            req.model_name = rng.choice(["two", "", "TWO", "other"])
            req.model_version = rng.choice(["", "1", "2", "x"])
        elif kind == 10 and req.inputs:
            del req.inputs[rng.randrange(len(req.inputs))]
        elif kind == 11:
            dup = req.inputs.add()
            dup.CopyFrom(req.inputs[0])
        elif kind == 12:
            del req.raw_input_contents[:]
        elif kind == 13 and inp is not None:
            inp.parameters["p"].Clear()
    data = bytearray(req.SerializeToString())
    if rng.random() < 0.15 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _fuzz(handle: Any, count: int, seed: int) -> None:
    channel = grpc.insecure_channel(handle.address)
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    s = stub(handle.port)

    def worker(w: int) -> list[str]:
        rng = random.Random(seed * 1000 + w)
        problems: list[str] = []
        for i in range(count // 4):
            req, _, _ = _valid(rng)
            payload = _corrupt(rng, req)
            try:
                raw_call(payload, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() not in ALLOWED:
                    problems.append(f"{w}/{i}: {exc.code().name} {exc.details()}")
                elif error_info(exc) is None:
                    problems.append(f"{w}/{i}: {exc.code().name} without ErrorInfo")
            if i % 10 == 0:
                good, a, b = _valid(rng)
                resp = s.ModelInfer(good, timeout=10)
                if not (
                    np.allclose(output_array(resp, 0, np.float32)[:, 0], a.sum(axis=1), atol=1e-4)
                    and np.array_equal(output_array(resp, 1, np.int64), b * b)
                ):
                    problems.append(f"{w}/{i}: wrong answer to a valid request")
        return problems

    with ThreadPoolExecutor(4) as pool:
        problems = [p for ps in pool.map(worker, range(4)) for p in ps]
    assert problems == [], problems[:10]
    good, _, b = _valid(random.Random(0))
    assert np.array_equal(output_array(s.ModelInfer(good), 1, np.int64), b * b)


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
