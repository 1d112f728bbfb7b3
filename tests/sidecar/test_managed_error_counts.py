"""A request the model fails on counts once in a managed sidecar's reports: the error rate a
rollout's guards judge is the one clients saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, stub

from modelplane.testing import onnx_models


def test_model_execution_failures_count_once(
    real_plane: RealPlane,  # noqa: F811
    real_managed: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    plane = real_plane
    blob = onnx_models.save(onnx_models.faulty_classifier(8), tmp_path / "f.onnx").read_bytes()
    plane.deploy({1: blob})
    handle = real_managed()
    assert handle.wait_ready(60)
    s = stub(handle.port)
    failed = 0
    for i in range(40):
        # The model fails on any first feature of 0.03 or more: 3 in 4 requests here.
        x = np.full((1, 8), 0.0 if i % 4 == 0 else 5.0, np.float32)
        try:
            s.ModelInfer(raw_request("fraud", {"input": ("FP32", x)}, id=f"q{i}"))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            failed += 1
    assert failed == 30
    reports = plane.wait_reports(lambda rs: sum(a.requests for r in rs for a in r.arms) >= 40)
    arms = [a for r in reports for a in r.arms]
    assert sum(a.requests for a in arms) == 40
    assert sum(a.errors for a in arms) == 30
    assert sum(a.rows for a in arms) == 10
    latencies = sum(sum(a.latency.counts) + a.latency.underflow + a.latency.overflow for a in arms)
    assert latencies == 40


def test_undecodable_calls_count_in_no_arm(
    real_plane: RealPlane,  # noqa: F811
    real_managed: Any,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    """Bytes that are no request were routed to no version: refused, but not passed off as
    the champion's traffic in the reports a rollout's guards judge."""
    plane = real_plane
    plane.deploy({n: artifacts[n] for n in (1, 2)})
    plane.canary(2, 50.0)
    handle = real_managed()
    assert handle.wait_ready(60)
    call = grpc.insecure_channel(f"127.0.0.1:{handle.port}").unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )
    for _ in range(30):
        try:
            call(b"\xff\xff", timeout=10)
            raise AssertionError("an undecodable call was answered")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    s = stub(handle.port)
    x = np.zeros((1, 8), np.float32)
    for i in range(10):
        s.ModelInfer(raw_request("fraud", {"input": ("FP32", x)}, id=f"ok{i}"), timeout=30)
    reports = plane.wait_reports(lambda rs: sum(a.requests for r in rs for a in r.arms) >= 10)
    seen = len(reports)
    # One more report after the valid calls were counted: nothing else arrives.
    reports = plane.wait_reports(lambda rs: len(rs) > seen)
    assert sum(a.requests for r in reports for a in r.arms) == 10


def test_bad_input_counts_in_no_arms_requests_or_latency(
    real_plane: RealPlane,  # noqa: F811
    real_managed: Any,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    """A caller's bad input, refused before the model ran, is no evidence about the version:
    before, it counted in the arm's requests and latency (not in its errors), so it diluted
    the error rate and p99 the guards judge and could make up a step's ``min_requests``."""
    plane = real_plane
    plane.deploy({1: artifacts[1]})
    handle = real_managed()
    assert handle.wait_ready(60)
    s = stub(handle.port)
    wrong = np.zeros((1, 5), np.float32)  # the model takes 8 features
    for i in range(20):
        try:
            s.ModelInfer(raw_request("fraud", {"input": ("FP32", wrong)}, id=f"bad{i}"))
            raise AssertionError("a wrong shape was answered")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    x = np.zeros((1, 8), np.float32)
    for i in range(10):
        s.ModelInfer(raw_request("fraud", {"input": ("FP32", x)}, id=f"ok{i}"), timeout=30)
    reports = plane.wait_reports(lambda rs: sum(a.requests for r in rs for a in r.arms) >= 10)
    seen = len(reports)
    reports = plane.wait_reports(lambda rs: len(rs) > seen)  # one more: nothing else arrives
    arms = [a for r in reports for a in r.arms]
    assert sum(a.requests for a in arms) == 10
    assert sum(a.errors for a in arms) == 0
    latencies = sum(sum(a.latency.counts) + a.latency.underflow + a.latency.overflow for a in arms)
    assert latencies == 10
