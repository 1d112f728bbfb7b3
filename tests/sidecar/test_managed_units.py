"""Units of managed mode: routing, the label rule and histograms, artifact verification,
the reporter's retries and bounds, the prediction index, and the settings."""

from __future__ import annotations

import hashlib
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelplane.errors import InvalidArgument
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.testing import onnx_models
from sidecar.managed.artifacts import ArtifactCache, ArtifactMismatch
from sidecar.managed.compare import (
    LATENCY,
    PROBABILITY,
    REGRESSION,
    Hist,
    OutputRule,
    ShadowCounts,
    correct,
)
from sidecar.managed.labels import Predicted, PredictionIndex
from sidecar.managed.reporter import Reporter
from sidecar.managed.router import Splitter, bucket, routing_key
from sidecar.managed.watch import backoff
from sidecar.settings import SidecarSettings

# -- router ------------------------------------------------------------------------------


def _req(**kw: Any) -> Any:
    return pb.ModelInferRequest(model_name="m", **kw)


def test_routing_key_from_parameter_or_id() -> None:
    req = _req(id="abc")
    assert routing_key(req) == b"abc"
    req.parameters["routing_key"].string_param = "user-1"
    assert routing_key(req) == b"user-1"
    req.parameters["routing_key"].int64_param = 42
    assert routing_key(req) == b"42"
    assert routing_key(_req()) is None
    empty = _req(id="abc")
    empty.parameters["routing_key"].string_param = ""
    assert routing_key(empty) == b"abc"  # an empty key is none: not one bucket for all
    for kind in ("bool_param", "double_param"):
        bad = _req()
        setattr(bad.parameters["routing_key"], kind, 1)
        with pytest.raises(InvalidArgument) as err:
            routing_key(bad)
        assert err.value.reason == "INVALID_PARAMETER"


def test_split_is_deterministic_sticky_and_monotone() -> None:
    keys = [f"user-{i}".encode() for i in range(4000)]
    half = Splitter("r1", 50, 0)
    picks = [half.candidate(k) for k in keys]
    assert picks == [Splitter("r1", 50, 0).candidate(k) for k in keys]
    assert 0.45 < sum(picks) / len(keys) < 0.55
    ten = Splitter("r1", 10, 0)
    # Raising the percent only moves keys to the candidate.
    assert all(half.candidate(k) for k in keys if ten.candidate(k))
    assert not any(Splitter("r1", 0, 0).candidate(k) for k in keys)
    assert all(Splitter("r1", 100, 0).candidate(k) for k in keys)
    assert bucket(b"user-1", "r1") == bucket(b"user-1", "r1")
    shadow = Splitter("r1", 0, 0.25)
    share = sum(shadow.shadowed(k) for k in keys) / len(keys)
    assert 0.2 < share < 0.3
    assert not Splitter("r1", 0, 0).shadowed(b"x")


# -- compare -----------------------------------------------------------------------------


def test_histogram_layouts() -> None:
    lat = Hist(LATENCY)
    lat.add(np.array([1e-6, 1e-3, 0.5, 1e3, np.nan]))
    msg = lat.to_proto()
    assert msg.log_scale and msg.low == pytest.approx(1e-5) and msg.high == pytest.approx(100)
    assert (msg.underflow, msg.overflow, sum(msg.counts)) == (1, 1, 2)
    prob = Hist(PROBABILITY)
    prob.add(np.array([0.0, 0.5, 1.0]))
    msg = prob.to_proto()
    assert sum(msg.counts) == 3 and msg.counts[-1] == 1 and msg.overflow == 0
    reg = Hist(REGRESSION)
    reg.add(np.array([-1e3, -1.0, 0.0, 2.5, 1e20]))
    msg = reg.to_proto()
    assert (
        msg.symlog and not msg.log_scale and msg.low == -(10.0**12 - 1) and msg.high == 10.0**12 - 1
    )
    assert sum(msg.counts) == 4 and msg.overflow == 1
    assert msg.counts[0:120].count(0) < 120 and sum(msg.counts[:120]) == 2


def _signature(model: Any, tmp_path: Path, name: str) -> tuple[Any, Path]:
    import onnxruntime as ort

    from sidecar.signature import signature_of

    path = onnx_models.save(model, tmp_path / name)
    return signature_of(ort.InferenceSession(str(path))), path


def test_label_rule(tmp_path: Path) -> None:
    sig, path = _signature(onnx_models.mlp(4, (8,), 3), tmp_path, "multi.onnx")
    rule: Any = OutputRule.of(sig, path)
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    assert rule.labels({"output": scores}).tolist() == [1, 0]
    assert rule.scores({"output": scores}).tolist() == pytest.approx([0.7, 0.5])
    sig, path = _signature(onnx_models.mlp(4, (8,), 2), tmp_path, "binary.onnx")
    rule = OutputRule.of(sig, path)
    binary = np.array([[0.2, 0.8]], np.float32)
    assert rule.scores({"output": binary}).tolist() == pytest.approx([0.8])
    sig, path = _signature(onnx_models.mlp(4, (8,), 1, softmax=False), tmp_path, "reg.onnx")
    rule = OutputRule.of(sig, path)
    assert rule.regression and rule.labels({"output": np.ones((2, 1), np.float32)}) is None
    sig, path = _signature(onnx_models.identity_model("INT64", ["n"]), tmp_path, "int.onnx")
    rule = OutputRule.of(sig, path)
    assert rule.labels({sig.outputs[0].name: np.array([3, 1])}).tolist() == [3, 1]
    assert correct(1, 1, False, 0.1) and not correct(1, 0, False, 0.1)
    assert correct(10.0, 10.5, True, 0.1) and not correct(10.0, 12.0, True, 0.1)


def test_shadow_pairs_by_label_and_by_tolerance() -> None:
    counts = ShadowCounts(2, PROBABILITY)
    counts.add_pairs(
        (np.array([1, 0, 1]), np.array([0.9, 0.1, 0.6])),
        (np.array([1, 1, 1]), np.array([0.8, 0.6, 0.7])),
        0.1,
    )
    assert (counts.pairs, counts.disagreements) == (3, 1)
    assert counts.abs_diff_sum == pytest.approx(0.7)
    reg = ShadowCounts(2, REGRESSION)
    reg.add_pairs((None, np.array([10.0, 10.0])), (None, np.array([10.5, 13.0])), 0.1)
    assert (reg.pairs, reg.disagreements) == (2, 1)
    msg = reg.to_proto()
    assert sum(msg.champion_scores.counts) == 2 and sum(msg.shadow_scores.counts) == 2


def test_shadow_pairs_without_scores_on_one_side_add_no_score_part() -> None:
    counts = ShadowCounts(2, PROBABILITY)
    counts.add_pairs(
        (np.array([1, 0, 1]), np.array([0.9, 0.1, 0.6])), (np.array([1, 1, 1]), None), 0.1
    )
    assert (counts.pairs, counts.disagreements, counts.abs_diff_sum) == (3, 1, 0.0)
    msg = counts.to_proto()
    assert sum(msg.champion_scores.counts) == 0 and sum(msg.shadow_scores.counts) == 0
    counts.add_pairs((None, np.array([0.5])), (np.array([1]), None), 0.1)  # nothing to pair
    assert counts.pairs == 3


# -- artifacts ---------------------------------------------------------------------------


def test_artifacts_are_verified_cached_and_reused(tmp_path: Path) -> None:
    data = b"model bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    calls: list[str] = []
    served = {"bytes": data}

    def download(digest: str) -> Any:
        calls.append(digest)
        blob = served["bytes"]
        return [blob[i : i + 1000] for i in range(0, len(blob), 1000)]

    cache = ArtifactCache(tmp_path / "cache", download)
    path = cache.fetch(sha, len(data))
    assert path.read_bytes() == data and calls == [sha]
    assert cache.fetch(sha, len(data)) == path and calls == [sha]  # reused, re-hashed
    path.write_bytes(b"tampered")
    assert cache.fetch(sha, len(data)).read_bytes() == data and len(calls) == 2
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ArtifactMismatch) as err:
        cache.fetch(other)
    assert err.value.reason == "ARTIFACT_DIGEST_MISMATCH"
    with pytest.raises(ArtifactMismatch) as err:
        cache.fetch(sha, len(data) - 1)
    assert err.value.reason == "ARTIFACT_SIZE_MISMATCH"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [sha]


def test_concurrent_writers_share_a_cache(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    sha = hashlib.sha256(data).hexdigest()
    caches = [
        ArtifactCache(tmp_path, lambda _: [data[i : i + 4096] for i in range(0, len(data), 4096)])
        for _ in range(4)
    ]
    results: list[Path] = []
    threads = [threading.Thread(target=lambda c=c: results.append(c.fetch(sha))) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(p.read_bytes() == data for p in results)
    assert [p.name for p in tmp_path.iterdir()] == [sha]


# -- reporter ----------------------------------------------------------------------------


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_reporter_retries_in_order_and_stays_bounded() -> None:
    from modelplane.v1 import deployments_pb2 as dpb

    received: list[int] = []
    up = threading.Event()

    def send(request: Any) -> Any:
        if not up.is_set():
            raise _Unavailable()
        received.append(request.sequence)
        return dpb.ReportWindowResponse(accepted=True)

    reporter = Reporter(send, max_pending=3, clock=lambda: 0.0)
    reporter.start()
    try:
        for _ in range(5):
            reporter.emit(dpb.ReportWindowRequest())
            time.sleep(0.02)
        assert reporter.dropped == 2 and reporter.pending == 3 and received == []
        up.set()
        reporter.emit(dpb.ReportWindowRequest())
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The oldest two fell out of the bounded queue; the rest go in order.
        assert received == [4, 5, 6]
    finally:
        reporter.stop()


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff(n, 0.2, 10.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert delays[:3] == pytest.approx([0.2, 0.4, 0.8]) and max(delays) == 10.0
    assert backoff(3, 0.2, 10.0, rand=lambda: 0.0) == pytest.approx(0.4)


# -- labels and settings -----------------------------------------------------------------


def test_prediction_index_is_bounded() -> None:
    index = PredictionIndex(4)
    p = [Predicted("champion", 1, i, False, 0.1) for i in range(6)]
    index.add(["a", "", "b"], [2, 1, 3], p)
    assert index.get("a", 0) is None  # evicted: the oldest go first
    assert index.get("a", 1) is not None and index.get("a", 1).value == 1  # type: ignore[union-attr]
    assert index.get("b", 2).value == 5  # type: ignore[union-attr]
    assert len(index) == 4


def test_a_row_predicted_again_becomes_the_newest() -> None:
    index = PredictionIndex(2)
    index.add(["a"], [1], [Predicted("champion", 1, 0, False, 0.1)])
    index.add(["b"], [1], [Predicted("champion", 1, 0, False, 0.1)])
    index.add(["a"], [1], [Predicted("champion", 1, 1, False, 0.1)])  # "a" again
    index.add(["c"], [1], [Predicted("champion", 1, 0, False, 0.1)])
    assert index.get("b", 0) is None  # the least recently predicted went
    assert index.get("a", 0).value == 1  # type: ignore[union-attr]
    assert index.get("c", 0) is not None


def test_prediction_index_memory_does_not_grow_with_request_id_length() -> None:
    index = PredictionIndex(8)
    long_id = "x" * (1 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(32):
            rid = f"{i:04d}{long_id}"
            index.add([rid], [1], [Predicted("champion", 1, i, False, 0.1)])
            del rid
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == 8
    assert held < 64 << 10, f"the index holds {held} bytes for 8 rows"
    assert index.get(f"0031{long_id}", 0).value == 31  # type: ignore[union-attr]
    assert index.get(f"0023{long_id}", 0) is None


def test_managed_settings() -> None:
    make: Any = SidecarSettings
    s = make(control_plane="127.0.0.1:5", deployment="deployments/fraud")
    assert s.managed and s.served_name == "fraud" and s.listen == "0.0.0.0:0"
    assert make(control_plane="h:1", deployment="x", listen="1.2.3.4:9").listen.endswith(":9")
    bad: dict[str, str]
    for bad in ({"control_plane": "h:1"}, {"control_plane": "h:1", "deployment": "a/b/c"}, {}):
        with pytest.raises(ValueError):
            make(**bad)
    assert make(model=Path("m.onnx")).listen == "0.0.0.0:8001"


# -- bounds and shutdown of reports, silent watches ----------------------------------------


def test_an_arm_reports_its_most_frequent_labels() -> None:
    from sidecar.managed.compare import MAX_COUNTED_LABELS, MAX_LABELS, ArmCounts

    counts = ArmCounts("champion", 1, None)
    # Labels 0..2999 once each, then 5000 three times and 7000 and 7001 twice each.
    counts.add_rows(3000, np.arange(3000, dtype=np.int64), None)
    counts.add_rows(7, np.array([5000, 5000, 5000, 7001, 7000, 7001, 7000]), None)
    summary = counts.to_proto()
    assert len(summary.label_counts) == MAX_LABELS
    assert summary.label_counts[5000] == 3
    assert summary.label_counts[7000] == summary.label_counts[7001] == 2
    # The rest of the places go to the smallest of the labels seen once.
    assert sorted(k for k, v in summary.label_counts.items() if v == 1) == list(
        range(MAX_LABELS - 3)
    )
    assert counts.labels_left_out == 3007 - sum(summary.label_counts.values())
    assert counts.to_proto() == summary
    # However many distinct labels a window sees, it holds a bounded number of them.
    many = ArmCounts("champion", 1, None)
    many.add_rows(MAX_COUNTED_LABELS + 500, np.arange(MAX_COUNTED_LABELS + 500), None)
    assert len(many.labels) == MAX_COUNTED_LABELS
    assert len(many.to_proto().label_counts) == MAX_LABELS
    assert many.labels_left_out == MAX_COUNTED_LABELS + 500 - MAX_LABELS


def test_few_labels_are_all_reported() -> None:
    from sidecar.managed.compare import ArmCounts

    counts = ArmCounts("candidate", 2, None)
    counts.add_rows(4, np.array([3, 1, 3, -2]), None)
    assert dict(counts.to_proto().label_counts) == {3: 2, 1: 1, -2: 1}
    assert counts.labels_left_out == 0


def test_the_flush_at_stop_bounds_each_call_by_the_time_left() -> None:
    from modelplane.v1 import deployments_pb2 as dpb

    up = threading.Event()
    timeouts: list[float] = []
    received: list[int] = []
    reporter: Reporter

    def send(request: Any) -> Any:
        timeouts.append(reporter.call_timeout())
        if not up.is_set():
            raise _Unavailable()
        received.append(request.sequence)
        return dpb.ReportWindowResponse(accepted=True)

    reporter = Reporter(send, clock=lambda: 0.0, call_timeout=10.0)
    reporter.start()
    reporter.emit(dpb.ReportWindowRequest())
    deadline = time.monotonic() + 5
    while reporter.failures < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reporter.failures == 1 and timeouts == [10.0]
    up.set()
    reporter.emit(dpb.ReportWindowRequest())  # the last window, closed at shutdown
    reporter.stop(flush_timeout=1.5)
    assert received == [1, 2] and reporter.pending == 0
    assert all(0 < t <= 1.5 for t in timeouts[-2:])
