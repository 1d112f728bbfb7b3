"""Dynamic batching under concurrency: every caller gets exactly its own rows back, batches
larger than one row form (read from the metrics endpoint), queues shed when full and expired
requests never run."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import output_array, raw_request, stub

from modelplane.errors import DeadlineExceeded, error_info
from sidecar.batcher import Batcher, Item
from sidecar.codec import Decoded


def _metric_samples(port: int, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(name):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Recorder:
    """An observer keeping every batch and rejection it is shown."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.rejected: list[Any] = []

    def on_batch(self, record: Any) -> None:
        self.batches.append(record)

    def on_rejected(self, record: Any) -> None:
        self.rejected.append(record)


def test_64_concurrent_clients_get_their_own_rows(model_dir: Path, sidecar_factory: Any) -> None:
    recorder = Recorder()
    handle = sidecar_factory(
        model_dir / "mlp.onnx",
        max_batch_size=64,
        max_queue_delay=0.002,
        metrics_listen="127.0.0.1:0",
        observers=[recorder],
    )
    session = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    stubs = [stub(handle.port) for _ in range(8)]
    per_client = 12

    def client(i: int) -> list[str]:
        problems = []
        s = stubs[i % len(stubs)]
        local = np.random.default_rng(i)
        for j in range(per_client):
            x = local.standard_normal((1 + (i + j) % 4, 32)).astype(np.float32) * (i + 1)
            resp = s.ModelInfer(raw_request("mlp", {"input": ("FP32", x)}, id=f"{i}-{j}"))
            got = output_array(resp, 0, np.float32)
            want = session.run(None, {"input": x})[0]
            if resp.id != f"{i}-{j}" or got.shape != want.shape:
                problems.append(f"{i}-{j}: id {resp.id} shape {got.shape}")
            elif not np.allclose(got, want, rtol=1e-5, atol=1e-6):
                problems.append(f"{i}-{j}: values differ by {np.abs(got - want).max()}")
        return problems

    del rng
    with ThreadPoolExecutor(64) as pool:
        problems = [p for ps in pool.map(client, range(64)) for p in ps]
    assert problems == []

    samples = _metric_samples(handle.metrics_port, "modelplane_inference_batch_size")
    labels = (("model", "mlp"), ("version", "1"))
    count = samples[("modelplane_inference_batch_size_count", labels)]
    single = samples[("modelplane_inference_batch_size_bucket", (("le", "1.0"), *labels))]
    assert count > single, "no session call ran more than one row"
    requests = _metric_samples(handle.metrics_port, "modelplane_inference_requests_total")
    ok = requests[("modelplane_inference_requests_total", (("code", "OK"), *labels))]
    assert ok == 64 * per_client
    # The observer saw every request exactly once, with row counts matching its arrays.
    deadline = time.monotonic() + 5
    while sum(len(b.request_ids) for b in recorder.batches) < 64 * per_client:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ids = [rid for b in recorder.batches for rid in b.request_ids]
    assert sorted(ids) == sorted(f"{i}-{j}" for i in range(64) for j in range(per_client))
    for b in recorder.batches:
        assert b.inputs["input"].shape[0] == sum(b.row_counts) == b.outputs["output"].shape[0]
    info = _metric_samples(handle.metrics_port, "modelplane_inference_model_info")
    assert any(dict(k[1]).get("provider") == "CPUExecutionProvider" for k in info)


def test_identity_batches_are_exact(model_dir: Path, sidecar_factory: Any) -> None:
    handle = sidecar_factory(model_dir / "id_int64.onnx", max_batch_size=16, max_queue_delay=0.003)
    s = stub(handle.port)

    def call(i: int) -> bool:
        x = np.arange(i * 30, i * 30 + 3 * (1 + i % 3), dtype=np.int64).reshape(-1, 3)
        resp = s.ModelInfer(raw_request("id_int64", {"x": ("INT64", x)}))
        return np.array_equal(output_array(resp, 0, np.int64), x)

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(call, range(200)))


def test_full_queue_sheds_with_resource_exhausted(model_dir: Path, sidecar_factory: Any) -> None:
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx", max_batch_size=64, max_queue_delay=0.3, max_queue_rows=4
    )
    s = stub(handle.port)
    x = np.ones((2, 3), np.float32)
    codes: list[Any] = []
    lock = threading.Lock()

    def call(_: int) -> None:
        try:
            s.ModelInfer(raw_request("id_fp32", {"x": ("FP32", x)}))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                info = error_info(exc)
                assert info is not None and info.reason == "QUEUE_FULL"
        with lock:
            codes.append(code)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(call, range(12)))
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert codes.count(grpc.StatusCode.OK) >= 2
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Still serving afterwards.
    resp = s.ModelInfer(raw_request("id_fp32", {"x": ("FP32", x)}))
    assert np.array_equal(output_array(resp, 0, np.float32), x)


def test_a_deadline_shorter_than_the_queue_delay_still_runs(
    model_dir: Path, sidecar_factory: Any
) -> None:
    """On an idle sidecar, the leader stops waiting for rows while the request's deadline
    still leaves time to run it: a 500 ms deadline under a 1 s queue delay (the longest) is
    answered (the deadline leaves a busy machine room for the round trip; waiting out the delay
    would not)."""
    recorder = Recorder()
    handle = sidecar_factory(
        model_dir / "id_fp32.onnx", max_batch_size=64, max_queue_delay=1.0, observers=[recorder]
    )
    s = stub(handle.port)
    x = np.ones((1, 3), np.float32)
    for i in range(3):
        resp = s.ModelInfer(
            raw_request("id_fp32", {"x": ("FP32", x)}, id=f"short-{i}"), timeout=0.5
        )
        assert resp.id == f"short-{i}"
        assert np.array_equal(output_array(resp, 0, np.float32), x)


def test_the_timeout_parameter_bounds_the_time_in_the_batch_queue(
    model_dir: Path, sidecar_factory: Any
) -> None:
    """``timeout`` (microseconds, what tritonclient's ``infer(timeout=)`` sends) expires a
    request still queued, as a gRPC deadline does; 0 means none."""
    handle = sidecar_factory(model_dir / "id_fp32.onnx", max_batch_size=64, max_queue_delay=0.5)
    s = stub(handle.port)
    x = np.ones((1, 3), np.float32)

    def request(micros: int) -> Any:
        r = raw_request("id_fp32", {"x": ("FP32", x)})
        r.parameters["timeout"].int64_param = micros
        return r

    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(request(1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not run" in caught.value.details()
    resp = s.ModelInfer(request(0), timeout=10)
    assert np.array_equal(output_array(resp, 0, np.float32), x)


def test_a_huge_timeout_parameter_means_none(model_dir: Path, sidecar_factory: Any) -> None:
    """INT64_MAX microseconds (a common "no timeout") is no deadline: a request that waits
    in the queue with it is answered, and batching goes on for everyone after it."""
    handle = sidecar_factory(model_dir / "id_fp32.onnx", max_batch_size=4, max_queue_delay=0.3)
    s = stub(handle.port)

    def send(rows: int, micros: int) -> Any:
        x = np.full((rows, 3), rows, np.float32)
        r = raw_request("id_fp32", {"x": ("FP32", x)})
        if micros:
            r.parameters["timeout"].int64_param = micros
        # No gRPC deadline: the parameter alone bounds the wait (the futures below bound it).
        return output_array(s.ModelInfer(r), 0, np.float32)

    with ThreadPoolExecutor(2) as pool:
        # 3 rows lead and wait for a fourth; 2 rows cannot join them and wait their turn.
        leader = pool.submit(send, 3, 0)
        time.sleep(0.05)
        waiter = pool.submit(send, 2, 2**63 - 1)
        assert np.array_equal(leader.result(timeout=30), np.full((3, 3), 3, np.float32))
        assert np.array_equal(waiter.result(timeout=30), np.full((2, 3), 2, np.float32))
        after = pool.submit(send, 1, 0)
        assert np.array_equal(after.result(timeout=30), np.ones((1, 3), np.float32))


def test_a_deadline_beyond_what_a_wait_takes_is_waited_for() -> None:
    def execute(batch: list[Item]) -> None:
        if batch[0].decoded.request_id == "first":
            time.sleep(0.2)
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=1, max_delay=0.0, max_queue_rows=64)
    first = Item(_decoded("first"), None, None)
    t = threading.Thread(target=batcher.submit, args=(first,))
    t.start()
    time.sleep(0.05)
    far = Item(_decoded("far"), time.monotonic() + 1e12, None)
    batcher.submit(far)
    t.join(5)
    assert far.result == "ok" and first.result == "ok"


def _decoded(rid: str) -> Decoded:
    return Decoded(arrays={}, outputs=(), rows=1, key=("k",), request_id=rid)


def test_expired_request_never_runs() -> None:
    """A request whose deadline passes while an earlier batch runs is answered
    DEADLINE_EXCEEDED and never reaches the session; one with time left runs next."""
    ran: list[str] = []
    started = threading.Event()

    def execute(batch: list[Item]) -> None:
        started.set()
        if not ran:
            time.sleep(0.4)
        ran.extend(it.decoded.request_id for it in batch)
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=8, max_delay=0.0, max_queue_rows=64)
    first = Item(_decoded("first"), None, None)
    t = threading.Thread(target=batcher.submit, args=(first,))
    t.start()
    assert started.wait(5)
    late = Item(_decoded("late"), time.monotonic() + 0.05, None)
    patient = Item(_decoded("patient"), time.monotonic() + 10, None)
    others = [threading.Thread(target=batcher.submit, args=(it,)) for it in (late, patient)]
    for th in others:
        th.start()
    for th in [t, *others]:
        th.join(10)
    assert isinstance(late.error, DeadlineExceeded) and late.result is None
    assert ran == ["first", "patient"] and patient.result == "ok"


def test_the_deadline_margin_follows_the_measured_call_time() -> None:
    """The leader stops waiting early enough for a batch as slow as the recent ones."""
    ran_at: list[float] = []

    def execute(batch: list[Item]) -> None:
        time.sleep(0.03)
        ran_at.append(time.monotonic())
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=8, max_delay=1.0, max_queue_rows=64, call_s=0.03)
    deadline = time.monotonic() + 0.2
    item = Item(_decoded("one"), deadline, None)
    batcher.submit(item)
    assert item.result == "ok" and item.error is None
    assert ran_at[0] <= deadline


def test_gpu_buckets_are_powers_of_two_up_to_the_batch_size() -> None:
    from sidecar.runtime import gpu_buckets

    assert gpu_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert gpu_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert gpu_buckets(2) == (1, 2)


def test_each_gpu_batch_size_gets_a_session_while_the_copies_fit_the_budget() -> None:
    from sidecar.runtime import SESSION_COPIES_BUDGET, gpu_buckets, separate_sessions

    sizes = gpu_buckets(64)  # 7 sizes: 6 extra copies of the weights
    assert separate_sessions(100 << 20, sizes)  # ResNet-50 in FP32
    assert separate_sessions(SESSION_COPIES_BUDGET // 6, sizes)
    assert not separate_sessions(SESSION_COPIES_BUDGET // 6 + 1, sizes)
    assert not separate_sessions(2 << 30, gpu_buckets(8))
    assert separate_sessions(10 << 30, (32,))  # one size: no extra copy at all


def test_padding_repeats_the_last_row_and_keeps_the_real_ones() -> None:
    from sidecar.runtime import stack_rows

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    grown = stack_rows([x], 8)
    assert grown.shape == (8, 4) and grown.dtype == np.float32
    np.testing.assert_array_equal(grown[:3], x)
    np.testing.assert_array_equal(grown[3:], np.repeat(x[2:], 5, axis=0))
    words = np.array([["a"], ["bc"]], dtype=object)
    assert stack_rows([words], 4)[:, 0].tolist() == ["a", "bc", "bc", "bc"]


def test_gpu_staging_stacks_and_pads_in_one_reused_buffer() -> None:
    from sidecar.cuda import CUDA, StagingBuffers
    from sidecar.runtime import Runtime, stack_rows
    from sidecar.signature import Signature, TensorSpec

    signature = Signature(
        inputs=(
            TensorSpec("x", "FP32", (-1, 3, 2), np.dtype(np.float32)),
            TensorSpec("w", "BYTES", (-1, 1), np.dtype(object)),
        ),
        outputs=(),
    )
    runtime = Runtime(None, signature, CUDA, Path("m.onnx"), buckets=(1, 2, 4, 8))
    runtime._staging = StagingBuffers(8, pin=False)
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((n, 3, 2)).astype(np.float32) for n in (2, 3))
    staged = runtime._stage("x", [a, b], 8)
    np.testing.assert_array_equal(staged, stack_rows([a, b], 8))
    again = runtime._stage("x", [b], 4)
    np.testing.assert_array_equal(again, stack_rows([b], 4))
    assert np.shares_memory(staged, again), "each call must reuse the input's buffer"
    assert staged.ctypes.data % 4096 == 0  # page-aligned, as page-locking wants
    # Sizes past the buffer, other layouts and strings are stacked as before, in new arrays.
    big = rng.standard_normal((9, 3, 2)).astype(np.float32)
    other = rng.standard_normal((2, 5)).astype(np.float32)
    words = np.array([["a"], ["b"]], dtype=object)
    for name, arrays, size in (("x", [big], 16), ("x", [other], 4), ("w", [words], 2)):
        out = runtime._stage(name, arrays, size)
        np.testing.assert_array_equal(out, stack_rows(arrays, size))
        assert not np.shares_memory(out, staged)


def test_gpu_staging_buffers_stay_within_their_byte_budget() -> None:
    from sidecar.cuda import CUDA, StagingBuffers
    from sidecar.runtime import Runtime, stack_rows
    from sidecar.signature import Signature, TensorSpec

    signature = Signature(
        inputs=(
            TensorSpec("small", "FP32", (-1, 4), np.dtype(np.float32)),
            TensorSpec("image", "FP32", (-1, 3, 64, 64), np.dtype(np.float32)),
        ),
        outputs=(),
    )
    runtime = Runtime(None, signature, CUDA, Path("m.onnx"), buckets=(1, 2, 4, 8))
    # 8 rows of 4 floats take 128 bytes; 8 images of 3x64x64 floats take 393,216.
    runtime._staging = staging = StagingBuffers(8, pin=False, max_bytes=100_000)
    rng = np.random.default_rng(7)
    small = rng.standard_normal((3, 4)).astype(np.float32)
    image = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    first = runtime._stage("small", [small], 4)
    assert np.shares_memory(first, runtime._stage("small", [small], 4))
    for _ in range(2):  # refused once, and not tried again
        out = runtime._stage("image", [image], 2)
        np.testing.assert_array_equal(out, stack_rows([image], 2))
        assert not np.shares_memory(out, first)
    assert staging.nbytes == 8 * 4 * 4 and set(staging._buffers) == {"small"}


def _gpu_like_runtime(path: Path) -> tuple[Any, Any, list[tuple[str, int]]]:
    """A runtime on the GPU call path (own thread, batch buckets, a session per bucket) whose
    device call is a CPU session call instead, since this machine may have no GPU; it records
    who called it with how many rows, and checks that each size ran on its own session."""
    from sidecar.cuda import CUDA, StagingBuffers
    from sidecar.runtime import Runtime
    from sidecar.signature import signature_of

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    buckets = (1, 2, 4, 8, 16)
    per_size = {
        rows: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for rows in buckets[:-1]
    }
    runtime = Runtime(
        sess, signature_of(sess), CUDA, path, buckets=buckets, sessions_by_rows=per_size
    )
    runtime._staging = StagingBuffers(16, pin=False)
    runtime.sessions_by_rows[16] = sess
    seen: list[tuple[str, int]] = []

    def device_call(session: Any, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = next(iter(feeds.values())).shape[0]
        assert session is runtime.sessions_by_rows.get(rows, sess), f"{rows} rows, wrong session"
        seen.append((threading.current_thread().name, rows))
        return session.run(list(outputs), feeds)  # type: ignore[no-any-return]

    runtime._run_bound = device_call  # type: ignore[method-assign]
    return runtime, sess, seen


def test_gpu_runtime_calls_its_session_from_one_thread_and_trims_padding(tmp_path: Path) -> None:
    from modelplane.testing import onnx_models

    runtime, sess, seen = _gpu_like_runtime(
        onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    )
    x = np.random.default_rng(5).standard_normal((24, 32)).astype(np.float32)
    with ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda i: runtime.run(["output"], {"input": x[i : i + 3]})[0], range(8))
        )
    runtime.close()
    for i, answer in enumerate(got):
        assert answer.shape == (3, 2)
        np.testing.assert_allclose(answer, sess.run(None, {"input": x[i : i + 3]})[0], rtol=1e-6)
    assert {name for name, _ in seen} == {seen[0][0]} and seen[0][0].startswith("cuda-session")
    assert {rows for _, rows in seen} == {4}


def test_gpu_runtime_runs_inputs_of_different_row_counts_unpadded(tmp_path: Path) -> None:
    from modelplane.testing import onnx_models

    runtime, sess, seen = _gpu_like_runtime(
        onnx_models.save(onnx_models.query_key(), tmp_path / "qk.onnx")
    )
    q = np.ones((3, 2), np.float32)
    try:
        for k_rows in (2, 5, 9):
            k = np.arange(k_rows * 2, dtype=np.float32).reshape(k_rows, 2)
            got = runtime.run(["out"], {"q": q, "k": k})[0]
            np.testing.assert_array_equal(got, sess.run(None, {"q": q, "k": k})[0])
    finally:
        runtime.close()
    assert [rows for _, rows in seen] == [3, 3, 3]


def test_gpu_runtime_stages_only_inputs_with_fixed_rows(tmp_path: Path) -> None:
    from modelplane.testing import onnx_models

    free = onnx_models.save(onnx_models.identity_model("FP32", ["n", "m"]), tmp_path / "f.onnx")
    fixed = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    for path, feed, staged in (
        (free, {"x": np.ones((1, 4096), np.float32)}, set()),
        (fixed, {"input": np.ones((1, 32), np.float32)}, {"input"}),
    ):
        runtime, sess, _ = _gpu_like_runtime(path)
        try:
            got = runtime.run([sess.get_outputs()[0].name], feed)
            np.testing.assert_array_equal(got[0], sess.run(None, feed)[0])
            assert runtime._staging is not None
            assert set(runtime._staging._buffers) == staged
        finally:
            runtime.close()


class _KeepRecords:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def on_records(self, records: list[Any]) -> None:
        self.records.extend(records)


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
def test_batches_for_a_gpu_session_are_built_at_its_sizes(tmp_path: Path, observed: bool) -> None:
    """Concurrent requests batched for a GPU-like session: the session only ever sees its batch
    sizes, and every request gets exactly its own rows back. Observers get each batch's inputs
    as they were, not the staging buffer that later batches overwrite."""
    from modelplane.testing import onnx_models
    from sidecar.codec import Limits
    from sidecar.model import ServingModel
    from sidecar.observers import ObserverHub

    runtime, sess, seen = _gpu_like_runtime(
        onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    )
    keep = _KeepRecords()
    hub = ObserverHub([keep] if observed else [], linger=0.0)
    hub.start()
    model = ServingModel(
        runtime,
        name="m",
        version="1",
        limits=Limits(max_request_rows=64, max_tensor_elements=1 << 20),
        max_batch_rows=16,
        max_delay=0.005,
        max_queue_rows=1024,
        observers=hub,
    )
    x = np.random.default_rng(6).standard_normal((40, 32)).astype(np.float32)
    sizes = [1 + i % 3 for i in range(20)]
    starts = np.cumsum([0, *sizes[:-1]])
    by_id: dict[str, np.ndarray] = {}

    def one(i: int) -> np.ndarray:
        rows = x[starts[i] : starts[i] + sizes[i]]
        by_id[f"r{i}"] = rows
        request = raw_request("m", {"input": ("FP32", rows)})
        request.id = f"r{i}"
        _, arrays = model.infer(request, None, None)
        return arrays[0]

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(one, range(20)))
    hub.close()
    runtime.close()
    for i, answer in enumerate(got):
        want = sess.run(None, {"input": x[starts[i] : starts[i] + sizes[i]]})[0]
        np.testing.assert_allclose(answer, want, rtol=1e-6)
    assert {rows for _, rows in seen} <= {1, 2, 4, 8, 16}
    assert any(rows > 4 for _, rows in seen), "no batch of several requests formed"
    if observed:
        assert sorted(r for rec in keep.records for r in rec.request_ids) == sorted(by_id)
        for rec in keep.records:
            sent = np.concatenate([by_id[r] for r in rec.request_ids])
            np.testing.assert_array_equal(rec.inputs["input"], sent)


def test_gpu_padding_is_not_used_when_outputs_are_not_per_row(tmp_path: Path) -> None:
    """A model whose output does not follow the input rows (Flatten over everything) gets its
    rows exactly as sent, not padded ones."""
    from onnx import TensorProto, helper

    from modelplane.testing import onnx_models

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"], axis=0)],
        "flatten_all",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["one", "m"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    runtime, _, seen = _gpu_like_runtime(onnx_models.save(model, tmp_path / "flat.onnx"))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = runtime.run(["y"], {"x": x})
    runtime.close()
    np.testing.assert_array_equal(y, x.reshape(1, 12))
    assert [rows for _, rows in seen] == [4, 3]


def test_unset_batch_size_is_decided_by_the_measured_call_time(tmp_path: Path) -> None:
    from modelplane.testing import onnx_models
    from sidecar.runtime import BATCHING_MIN_CALL_S, CUDA, Runtime, serving_batch_rows
    from sidecar.settings import DEFAULT_BATCH_ROWS, SidecarSettings
    from sidecar.signature import signature_of

    path = onnx_models.save(onnx_models.mlp(), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cpu = Runtime(sess, signature_of(sess), "CPUExecutionProvider", path)
    unset = SidecarSettings(model=path)
    cpu.single_call_s = BATCHING_MIN_CALL_S / 10
    rows, why_off = serving_batch_rows(unset, cpu)
    assert rows == 1 and why_off is not None
    assert "25.0 µs at warm-up, under 250.0 µs" in why_off and "--max-batch-size" in why_off
    cpu.single_call_s = BATCHING_MIN_CALL_S * 4
    assert serving_batch_rows(unset, cpu) == (DEFAULT_BATCH_ROWS, None)
    fast = BATCHING_MIN_CALL_S / 10
    cpu.single_call_s = fast
    assert serving_batch_rows(SidecarSettings(model=path, max_batch_size=8), cpu) == (8, None)
    gpu = Runtime(sess, signature_of(sess), CUDA, path, single_call_s=fast)
    assert serving_batch_rows(unset, gpu) == (DEFAULT_BATCH_ROWS, None)
    gpu.close()


def test_default_sidecar_batches_the_heavy_model_and_not_the_tiny_one(
    tmp_path: Path, sidecar_factory: Any
) -> None:
    """Warm-up decides: the 32-feature MLP (microseconds per call) is served unbatched with a
    few request threads; the heavy MLP (about a millisecond here) is batched."""
    from modelplane.testing import onnx_models
    from sidecar.runtime import BATCHING_MIN_CALL_S

    tiny = sidecar_factory(onnx_models.save(onnx_models.mlp(), tmp_path / "tiny.onnx"))
    heavy = sidecar_factory(onnx_models.save(onnx_models.heavy_mlp(), tmp_path / "heavy.onnx"))
    tiny_model, heavy_model = tiny.slot.current, heavy.slot.current
    assert tiny_model.runtime.single_call_s < BATCHING_MIN_CALL_S
    assert tiny_model.batcher is None
    assert heavy_model.runtime.single_call_s >= BATCHING_MIN_CALL_S
    assert heavy_model.batcher is not None
    x = np.random.default_rng(7).standard_normal((2, 32)).astype(np.float32)
    reply = stub(tiny.port).ModelInfer(raw_request("tiny", {"input": ("FP32", x)}), timeout=10)
    want = ort.InferenceSession(str(tmp_path / "tiny.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(output_array(reply, 0, np.float32), want, rtol=1e-5)


def test_a_short_deadline_behind_a_patient_head_still_runs() -> None:
    """The leader stops waiting for rows when any request that would join its batch is about
    to run out of time, not only the one at the head of the queue."""
    batches: list[tuple[float, list[str]]] = []

    def execute(batch: list[Item]) -> None:
        batches.append((time.monotonic(), [it.decoded.request_id for it in batch]))
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=8, max_delay=1.0, max_queue_rows=64)
    head = Item(_decoded("head"), time.monotonic() + 30, None)
    first = threading.Thread(target=batcher.submit, args=(head,))
    first.start()
    time.sleep(0.05)
    deadline = time.monotonic() + 0.3
    hurried = Item(_decoded("hurried"), deadline, None)
    batcher.submit(hurried)
    first.join(5)
    assert hurried.error is None and hurried.result == "ok"
    [(ran, ids)] = batches
    assert ran <= deadline and ids == ["head", "hurried"]


def test_the_leader_leaves_a_tenth_of_a_requests_time_for_the_answer() -> None:
    """A leader waiting for rows runs while a tenth of the time a request came with is left,
    not a fixed couple of milliseconds that one late wake-up on a busy machine would use up."""
    batches: list[float] = []

    def execute(batch: list[Item]) -> None:
        batches.append(time.monotonic())
        for it in batch:
            it.result = "ok"

    batcher = Batcher(execute, max_rows=8, max_delay=10.0, max_queue_rows=64)
    budget = 2.0
    item = Item(_decoded("patient"), time.monotonic() + budget, None)
    batcher.submit(item)
    assert item.error is None and item.result == "ok"
    [ran] = batches
    # It ran about budget / 10 before the deadline; half of that is left for a slow wake-up.
    assert ran <= item.enqueued + budget - budget / 20
