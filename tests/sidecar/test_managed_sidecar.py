"""Managed sidecars against a control-plane double: readiness, routing, switching under load,
corrupt artifacts, reports, shadow, labels and bad input."""

from __future__ import annotations

import functools
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from control_plane_double import FakeControlPlane, state
from fuzzing import Vocabulary, drive
from sidecar_helpers import health_status, managed_request, output_array, raw_request, stub

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.v1 import deployments_pb2 as dpb
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"
_request = functools.partial(managed_request, NAME)


def _keyed(key: str, **kw: Any) -> Any:
    req = _request(**kw)
    req.parameters["routing_key"].string_param = key
    return req


def _start_ready(managed: Any, plane: FakeControlPlane, artifacts: dict, **kw: Any) -> Any:
    handle = managed(**kw)
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    return handle


def test_ready_only_once_the_first_champion_is_loaded(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = managed()
    s = stub(handle.port)
    assert not s.ServerReady(pb.ServerReadyRequest()).ready
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(_request())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    assert s.ModelReady(pb.ModelReadyRequest(name=NAME)).ready
    assert s.ModelReady(pb.ModelReadyRequest(name=NAME, version="1")).ready
    meta = s.ModelMetadata(pb.ModelMetadataRequest(name=NAME))
    assert meta.name == NAME and list(meta.versions) == ["1"]
    reply = s.ModelInfer(_request(id="r1"))
    assert reply.model_name == NAME and reply.model_version == "1" and reply.id == "r1"
    assert plane.watch_requests[0].name == f"deployments/{NAME}"
    assert plane.watch_requests[0].replica == handle.replica


def test_switching_champion_under_load_fails_no_request(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = _start_ready(managed, plane, artifacts)
    s = stub(handle.port)
    answered: dict[str, int] = {}
    errors: list[Exception] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                reply = s.ModelInfer(_request(seed=seed + i))
                answered[reply.model_version] = answered.get(reply.model_version, 0) + 1
            except grpc.RpcError as exc:
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=load, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while answered.get("1", 0) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        plane.push(state(NAME, 2, plane.versions(artifacts, 2), champion=2))
        while answered.get("2", 0) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert answered.get("1", 0) >= 50 and answered.get("2", 0) >= 50
    # Version 1 is released once its requests drained.
    deadline = time.monotonic() + 10
    while handle.manager.retiring and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.manager.retiring == [] and sorted(handle.manager.loaded) == [2]


def test_canary_split_is_sticky_by_routing_key(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = _start_ready(managed, plane, artifacts)
    plane.push(
        state(NAME, 2, plane.versions(artifacts, 1, 2), 1, candidate=2, percent=50, rollout_id="r")
    )
    s = stub(handle.port)
    deadline = time.monotonic() + 60
    while handle.manager.table.generation != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: dict[str, int] = {}
    for i in range(60):
        first = s.ModelInfer(_keyed(f"user-{i}")).model_version
        again = s.ModelInfer(_keyed(f"user-{i}", seed=5)).model_version
        assert first == again
        seen[first] = seen.get(first, 0) + 1
    assert set(seen) == {"1", "2"}
    # A pin bypasses routing; metadata lists both versions.
    for _ in range(5):
        assert s.ModelInfer(_request(model_version="2")).model_version == "2"
    assert sorted(s.ModelMetadata(pb.ModelMetadataRequest(name=NAME)).versions) == ["1", "2"]


def test_windows_belong_to_the_rollout_only_while_it_is_in_progress(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    """The desired state keeps naming the last rollout after it ends; windows served after
    that belong to no rollout (the control plane counts them as the champion's own)."""
    handle = _start_ready(managed, plane, artifacts)
    versions = plane.versions(artifacts, 1, 2)
    running = dpb.ROLLOUT_STATE_RUNNING
    plane.push(state(NAME, 2, versions, 1, 2, percent=50, rollout_id="r", rollout_state=running))
    s = stub(handle.port)

    def served_under(generation: int) -> list[Any]:
        def seen(reports: list[Any]) -> list[Any]:
            s.ModelInfer(_request())
            return [r for r in reports if r.generation == generation and r.arms]

        return plane.wait_reports(lambda rs: len(seen(rs)) >= 2)

    assert {r.rollout_id for r in served_under(2) if r.generation == 2} == {"r"}
    ended = dpb.ROLLOUT_STATE_ROLLED_BACK
    plane.push(state(NAME, 3, versions, 1, rollout_id="r", rollout_state=ended))
    assert {r.rollout_id for r in served_under(3) if r.generation == 3} == {""}


def test_bad_input_codes(managed: Any, plane: FakeControlPlane, artifacts: dict) -> None:
    handle = _start_ready(managed, plane, artifacts)
    s = stub(handle.port)
    cases = []
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(_request(model_version="9"))
    cases.append((err.value, grpc.StatusCode.NOT_FOUND, "MODEL_VERSION_NOT_FOUND"))
    bad = _request()
    bad.parameters["routing_key"].bool_param = True
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(bad)
    cases.append((err.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER"))
    with pytest.raises(grpc.RpcError) as err:
        s.ModelInfer(raw_request("other", {"input": ("FP32", np.zeros((1, 8), np.float32))}))
    cases.append((err.value, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"))
    with pytest.raises(grpc.RpcError) as err:
        s.ModelMetadata(pb.ModelMetadataRequest(name=NAME, version="7"))
    cases.append((err.value, grpc.StatusCode.NOT_FOUND, "MODEL_VERSION_NOT_FOUND"))
    for exc, code, reason in cases:
        assert exc.code() == code, exc.details()
        info = error_info(exc)
        assert info is not None and info.reason == reason, (info, exc.details())
    # The sidecar still serves.
    assert s.ModelInfer(_request()).model_version == "1"


def test_fuzzed_requests_never_break_a_managed_sidecar(
    managed: Any, plane: FakeControlPlane, artifacts: dict, tmp_path: Path
) -> None:
    """Damaged requests through routing, a canary split, a shadow copy and the log: client
    errors with reasons only; valid requests between them get their version's answer."""
    import onnxruntime as ort

    from sidecar.predlog import PredictionLogSettings, read_logs

    log_dir = tmp_path / "log"
    handle = _start_ready(
        managed,
        plane,
        artifacts,
        max_batch_size=16,
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05),
    )
    plane.push(
        state(
            NAME,
            2,
            plane.versions(artifacts, 1, 2),
            1,
            candidate=2,
            percent=50,
            shadow=1.0,
            rollout_id="f",
        )
    )
    deadline = time.monotonic() + 60
    while handle.manager.table.generation != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sessions = {str(n): ort.InferenceSession(artifacts[n]) for n in (1, 2)}

    def valid(rng: random.Random) -> tuple[Any, np.ndarray]:
        rows = rng.randint(1, 3)
        x = np.array([[rng.uniform(-3, 3) for _ in range(8)] for _ in range(rows)], np.float32)
        req = raw_request(NAME, {"input": ("FP32", x)})
        if rng.random() < 0.5:
            req.parameters["routing_key"].string_param = f"user-{rng.randrange(100)}"
        return req, x

    def right(x: np.ndarray, resp: Any) -> bool:
        session = sessions.get(resp.model_version)
        return session is not None and bool(
            np.allclose(output_array(resp, 0, np.float32), session.run(None, {"input": x})[0])
        )

    words = Vocabulary(NAME, ("input",), ("output",), versions=("", "1", "2", "3", "x"))
    drive(handle.port, 1200, 5, valid, right, words)
    assert health_status(handle.port) == "SERVING"
    handle.stop(5)
    arms = set(read_logs(log_dir).column("arm").to_pylist())
    assert arms == {"champion", "candidate", "shadow"}, arms


def test_corrupt_artifact_is_never_loaded_and_is_retried(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = _start_ready(managed, plane, artifacts)
    versions = plane.versions(artifacts, 2)
    sha2 = versions[2][0]
    plane.corrupt.add(sha2)
    plane.push(state(NAME, 2, versions, champion=2))
    deadline = time.monotonic() + 30
    # A download is recorded when the plane starts sending it; the failure is
    # counted once the sidecar has hashed the bytes, so wait for both.
    while (
        plane.downloads.count(sha2) < 2 or handle.manager.failures < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert plane.downloads.count(sha2) >= 2
    assert handle.manager.failures >= 2
    assert "ARTIFACT" in (handle.manager.last_error or "") or "hash" in handle.manager.last_error
    s = stub(handle.port)
    assert s.ModelInfer(_request()).model_version == "1"
    assert not (handle.cache_dir / sha2).exists()
    # No partial download is left behind (temporary files are hidden: ".<name>...").
    assert [p for p in handle.cache_dir.iterdir() if p.name.startswith(".")] == []
    plane.corrupt.clear()
    while handle.manager.table.generation != 2 and time.monotonic() < deadline + 30:
        time.sleep(0.05)
    assert s.ModelInfer(_request()).model_version == "2"


def test_reports_carry_sequences_and_arm_counts(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = _start_ready(managed, plane, artifacts)
    s = stub(handle.port)
    for i in range(20):
        s.ModelInfer(_request(rows=2, seed=i, id=f"q{i}"))
    reports = plane.wait_reports(
        lambda rs: sum(a.requests for r in rs for a in r.arms if a.arm == "champion") >= 20
    )
    assert all(r.name == f"deployments/{NAME}" and r.replica == handle.replica for r in reports)
    sequences = [r.sequence for r in reports]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    champion = [a for r in reports for a in r.arms if a.arm == "champion"]
    assert sum(a.rows for a in champion) == 40
    assert sum(a.errors for a in champion) == 0
    assert sum(sum(a.label_counts.values()) for a in champion) == 40
    assert (
        sum(sum(a.latency.counts) + a.latency.underflow + a.latency.overflow for a in champion)
        == 20
    )
    assert sum(sum(a.scores.counts) for a in champion) == 40
    assert all(a.version == 1 for a in champion)


def test_failed_reports_are_retried_with_the_next_window(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    plane.refuse_reports = True
    handle = _start_ready(managed, plane, artifacts)
    s = stub(handle.port)
    for i in range(5):
        s.ModelInfer(_request(seed=i))
    deadline = time.monotonic() + 20
    while handle.reporter.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.reporter.failures >= 2 and plane.reports == []
    plane.refuse_reports = False
    reports = plane.wait_reports(
        lambda rs: sum(a.requests for r in rs for a in r.arms) >= 5 and len(rs) >= 3
    )
    # Each report once and in order (numbers follow the clock, see sidecar.managed.reporter).
    sequences = [r.sequence for r in reports]
    assert sequences == sorted(set(sequences))


def test_shadow_pairs_are_compared_and_never_answer(
    managed: Any, plane: FakeControlPlane, artifacts: dict, tmp_path: Path
) -> None:
    from sidecar.predlog import PredictionLogSettings, read_logs

    log_dir = tmp_path / "log"
    handle = _start_ready(
        managed,
        plane,
        artifacts,
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05),
    )
    plane.push(
        state(NAME, 2, plane.versions(artifacts, 1, 2), 1, candidate=2, shadow=1.0, rollout_id="s")
    )
    deadline = time.monotonic() + 60
    while handle.manager.table.generation != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    s = stub(handle.port)
    for i in range(30):
        assert s.ModelInfer(_keyed(f"k{i}", seed=i, id=f"s{i}")).model_version == "1"
    reports = plane.wait_reports(lambda rs: sum(r.shadow.pairs for r in rs) >= 30)
    shadow = [r.shadow for r in reports if r.generation == 2]
    assert all(sh.version == 2 for sh in shadow if sh.pairs)
    assert sum(sh.pairs for sh in shadow) == 30
    assert sum(sum(sh.shadow_scores.counts) for sh in shadow) == 30
    assert sum(sh.disagreements for sh in shadow) <= 30
    assert all(a.arm == "champion" for r in reports for a in r.arms)
    handle.stop(5)
    table = read_logs(log_dir)
    arms = table.group_by(["arm", "model_version"]).aggregate([("row", "count")]).to_pylist()
    counts = {(a["arm"], a["model_version"]): a["row_count"] for a in arms}
    assert counts[("shadow", "2")] == 30 and counts[("champion", "1")] == 30


def test_labels_join_count_and_log(
    managed: Any, plane: FakeControlPlane, artifacts: dict, tmp_path: Path
) -> None:
    import pyarrow as pa

    from sidecar.predlog import PredictionLogSettings, read_logs
    from sidecar.predlog.files import list_log_files
    from sidecar.predlog.reader import read_file_batches

    log_dir = tmp_path / "log"
    handle = _start_ready(
        managed,
        plane,
        artifacts,
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05),
    )
    s = stub(handle.port)
    predicted = {}
    for i in range(10):
        reply = s.ModelInfer(_request(seed=i, id=f"lab{i}"))
        predicted[f"lab{i}"] = int(np.argmax(output_array(reply, 0, np.float32)[0]))
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    # Wait until the observer indexed every prediction.
    deadline = time.monotonic() + 10
    while len(handle.observer.index) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    labels = [
        sidecar_pb2.Label(
            request_id=f"lab{i}",
            class_label=predicted[f"lab{i}"] if i < 6 else 1 - predicted[f"lab{i}"],
        )
        for i in range(10)
    ]
    labels.append(sidecar_pb2.Label(request_id="unknown", class_label=1))
    reply = admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels))
    assert (reply.accepted, reply.matched) == (11, 10)
    reports = plane.wait_reports(lambda rs: sum(a.labeled for r in rs for a in r.arms) >= 10)
    champion = [a for r in reports for a in r.arms if a.arm == "champion"]
    assert sum(a.labeled for a in champion) == 10 and sum(a.correct for a in champion) == 6
    # Bad input: nothing joined or written.
    for bad, reason in (
        (sidecar_pb2.Label(request_id="", class_label=1), "MISSING_REQUEST_ID"),
        (sidecar_pb2.Label(request_id="lab1"), "MISSING_LABEL_VALUE"),
        (sidecar_pb2.Label(request_id="lab1", row=-1, class_label=0), "INVALID_ROW"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=[labels[0], bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(err.value)
        assert info is not None and info.reason == reason, err.value.details()
    handle.stop(5)
    files = list_log_files(log_dir, labels=True)
    assert len(files) == 1 and files[0].name.startswith("labels-")
    table = pa.Table.from_batches(list(read_file_batches(files[0])))
    assert table.num_rows == 11
    assert table.column("matched").to_pylist().count(True) == 10
    assert table.column("correct").to_pylist().count(True) == 6
    predictions = read_logs(log_dir)
    assert set(predictions.column("arm").to_pylist()) == {"champion"}
    assert predictions.num_rows == 10


def test_watch_reconnects_and_keeps_serving(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    handle = _start_ready(managed, plane, artifacts)
    s = stub(handle.port)
    plane.break_watch()
    deadline = time.monotonic() + 20
    while handle.watcher.errors < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handle.watcher.errors >= 1
    assert s.ModelInfer(_request()).model_version == "1"
    plane.push(state(NAME, 2, plane.versions(artifacts, 2), champion=2))
    while handle.manager.table.generation != 2 and time.monotonic() < deadline + 40:
        time.sleep(0.05)
    assert s.ModelInfer(_request()).model_version == "2"
    assert plane.watchers >= 2


def test_ingest_labels_needs_managed_mode(sidecar_factory: Any, model_dir: Path) -> None:
    handle = sidecar_factory(model_dir / "mlp.onnx")
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    with pytest.raises(grpc.RpcError) as err:
        admin.IngestLabels(
            sidecar_pb2.IngestLabelsRequest(
                labels=[sidecar_pb2.Label(request_id="a", class_label=1)]
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_drift_counts_per_version_against_its_baseline(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    import pyarrow as pa

    from modelplane.profiles import build_profile

    rng = np.random.default_rng(0)
    columns = {f"f{j}": rng.standard_normal(2000) for j in range(8)}
    profile = build_profile(pa.table(columns), list(columns), bins=5)
    baseline = plane.add_blob(profile.to_bytes())
    sha = plane.add_blob(artifacts[1])
    handle = managed()
    plane.push(state(NAME, 1, {1: (sha, len(artifacts[1]), baseline)}, champion=1))
    assert handle.wait_ready(60)
    s = stub(handle.port)
    for i in range(25):
        s.ModelInfer(_request(rows=4, seed=i))
    reports = plane.wait_reports(
        lambda rs: sum(a.drift.rows for r in rs for a in r.arms if a.arm == "champion") >= 100
    )
    drift = [a.drift for r in reports for a in r.arms if a.drift.rows]
    assert all(d.baseline_sha256 == baseline for d in drift)
    assert [f.name for f in drift[0].features] == list(columns)
    for j in range(8):
        counted = sum(sum(d.features[j].counts) + d.features[j].missing for d in drift)
        assert counted == 100
        assert all(len(d.features[j].counts) == 5 for d in drift)
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    report = admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest())
    assert report.model_name == NAME and report.model_version == "1" and report.row_count == 100


def test_cli_serves_a_deployment_in_a_subprocess(
    plane: FakeControlPlane, artifacts: dict, tmp_path: Path
) -> None:
    import signal

    from sidecar_helpers import spawn_sidecar

    plane.push(state(NAME, 1, plane.versions(artifacts, 1), champion=1))
    proc, ready = spawn_sidecar(
        [
            "--control-plane",
            plane.address,
            "--deployment",
            f"deployments/{NAME}",
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cpu",
            "--log-dir",
            str(tmp_path / "log"),
        ],
        stderr=tmp_path / "stderr.log",
    )
    try:
        assert ready["port"] > 0
        reply = stub(ready["port"]).ModelInfer(_request())
        assert reply.model_version == "1"
        assert (tmp_path / "log" / "cache" / plane.state.versions[0].artifact_sha256).is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    (started,) = [
        json.loads(line)
        for line in (tmp_path / "stderr.log").read_text().splitlines()
        if '"managed sidecar started"' in line
    ]
    # What the process may use, and the request threads sized from it.
    assert started["cpu"]["affinity_cpus"] == len(os.sched_getaffinity(0))
    assert 1 <= started["cpu"]["cores"] <= started["cpu"]["affinity_cpus"]
    assert started["request_threads"] >= 4
