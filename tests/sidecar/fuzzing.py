"""A seeded request fuzzer shared by the standalone and managed sidecar tests.

:func:`corrupt` damages a valid ``ModelInferRequest`` structurally (datatypes, shapes, raw
contents, names, parameters, outputs, model and version, duplicated or missing inputs) and
sometimes at the byte level. :func:`drive` sends thousands of such requests from four
threads, interleaved with valid ones whose answers must stay right, and fails on any answer
other than a client error carrying an ``ErrorInfo`` reason.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from sidecar_helpers import stub

from modelplane.errors import error_info

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A ``timeout`` parameter of a few microseconds expires a request in the batch queue.
    grpc.StatusCode.DEADLINE_EXCEEDED,
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
PARAMETERS = ["priority", "timeout", "x", "classification", "binary_data_output", "routing_key"]


@dataclass(frozen=True)
class Vocabulary:
    """The names a corrupted request picks from: the model's own and some that are wrong."""

    model: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    versions: tuple[str, ...] = ("", "1", "2", "x")

    def input_names(self) -> list[str]:
        return [*self.inputs, "c", "", f"{self.inputs[0]}\x00"]

    def output_names(self) -> list[str]:
        return [*self.outputs, "nope", ""]

    def model_names(self) -> list[str]:
        return [self.model, "", self.model.upper(), "other"]


def corrupt(rng: random.Random, req: Any, words: Vocabulary) -> bytes:
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
            inp.name = rng.choice(words.input_names())
        elif kind == 6 and inp is not None:
            inp.contents.fp32_contents.extend([1.0] * rng.randint(0, 8))
            inp.contents.int64_contents.extend([1] * rng.randint(0, 3))
        elif kind == 7:
            req.outputs.add(name=rng.choice(words.output_names()))
        elif kind == 8:
            param = req.parameters[rng.choice(PARAMETERS)]
            choice = rng.randrange(5)
            if choice == 0:
                param.string_param = rng.choice(["v", "", "\u00e9" * 300])
            elif choice == 1:
                param.int64_param = rng.randint(-5, 5)
            elif choice == 2:
                param.bool_param = True
            elif choice == 3:
                param.double_param = float("nan")
            else:
                # The far end: INT64_MAX or UINT64_MAX ("no timeout" to many clients).
                if rng.random() < 0.5:
                    param.int64_param = 2**63 - 1
                else:
                    param.uint64_param = 2**64 - 1
        elif kind == 9:
            req.model_name = rng.choice(words.model_names())
            req.model_version = rng.choice(words.versions)
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


#: A valid request and what its answer is checked against.
Valid = Callable[[random.Random], tuple[Any, Any]]
#: Whether ``response`` is the right answer for what :data:`Valid` returned with its request.
Check = Callable[[Any, Any], bool]


def drive(port: int, count: int, seed: int, valid: Valid, check: Check, words: Vocabulary) -> None:
    """Send ``count`` corrupted requests from four threads, with a valid request after every
    ten; fail on a status outside :data:`ALLOWED`, an error without ``ErrorInfo``, or a wrong
    answer to a valid request."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    infer = stub(port).ModelInfer

    def worker(w: int) -> list[str]:
        rng = random.Random(seed * 1000 + w)
        problems: list[str] = []
        for i in range(count // 4):
            req, _ = valid(rng)
            payload = corrupt(rng, req, words)
            try:
                raw_call(payload, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() not in ALLOWED:
                    problems.append(f"{w}/{i}: {exc.code().name} {exc.details()}")
                elif error_info(exc) is None:
                    problems.append(f"{w}/{i}: {exc.code().name} without ErrorInfo")
            if i % 10 == 0:
                good, expected = valid(rng)
                if not check(expected, infer(good, timeout=10)):
                    problems.append(f"{w}/{i}: wrong answer to a valid request")
        return problems

    try:
        with ThreadPoolExecutor(4) as pool:
            problems = [p for ps in pool.map(worker, range(4)) for p in ps]
        assert problems == [], problems[:10]
        good, expected = valid(random.Random(0))
        assert check(expected, infer(good, timeout=10))
    finally:
        channel.close()
