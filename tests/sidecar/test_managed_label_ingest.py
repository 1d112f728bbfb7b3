"""``IngestLabels`` on a real managed sidecar: labels are checked against the prediction they
join before any is counted or written, and what a call answers matches what the windows
report (as a real control plane stored them) and the label log holds."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import (
    FAILING_DISK,
    health_status,
    output_array,
    raw_request,
    spawn_sidecar,
    stub,
)

from modelplane.errors import error_info
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"


def _admin(h: Any) -> Any:
    return sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(h.address))


def _serve(managed: Any, plane: RealPlane, models: dict[int, bytes], **kw: Any) -> Any:
    """Deploy ``models`` (the first the champion) and start a managed sidecar of them."""
    plane.deploy(models, champion=min(models))
    h = managed(**kw)
    assert h.wait_ready(60)
    return h


def _predict(h: Any, request_id: str, x: np.ndarray[Any, Any]) -> Any:
    return stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id=request_id))


def _classes(h: Any, request_id: str, rows: int, seed: int) -> list[int]:
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    reply = _predict(h, request_id, x)
    return [int(v) for v in np.argmax(output_array(reply, 0, np.float32), axis=1)]


def _indexed(h: Any, rows: int) -> None:
    deadline = time.monotonic() + 10
    while len(h.observer.index) < rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(h.observer.index) >= rows


def _tally(plane: RealPlane, settle_windows: int = 3) -> tuple[int, int]:
    """(labeled, correct) over every report the control plane stored, once ``settle_windows``
    more windows were stored."""
    seen = len(plane.reports)
    reports = plane.wait_reports(lambda rs: len(rs) >= seen + settle_windows)
    arms = [a for r in reports for a in r.arms]
    return sum(a.labeled for a in arms), sum(a.correct for a in arms)


def _refused(admin: Any, labels: list[Any]) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as caught:
        admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels))
    info = error_info(caught.value)
    return caught.value.code(), f"{info.reason if info else None}: {caught.value.details()}"


def regression_model(seed: int) -> bytes:
    """``input`` FP32 [n, 8] -> ``value`` FP32 [n, 1] (a linear regression)."""
    w = np.random.default_rng(seed).standard_normal((8, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["value"])],
        "regression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["n", 1])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_classifier_takes_classes_not_fractional_targets(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> None:
    plane = real_plane
    h = _serve(real_managed, plane, {1: artifacts[1]})
    predicted = _classes(h, "r1", 4, seed=0)
    _indexed(h, 4)
    admin = _admin(h)
    right = sidecar_pb2.Label(request_id="r1", row=0, class_label=predicted[0])
    # 0.9 above the predicted class would be truncated to it; -0.5 likewise to class 0.
    for bad in (predicted[1] + 0.9, -0.5):
        wrong = sidecar_pb2.Label(request_id="r1", row=1, target=bad)
        code, details = _refused(admin, [right, wrong])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("LABEL_TYPE_MISMATCH"), details
        assert "'r1', row 1" in details and "class_label" in details
    code, details = _refused(
        admin, [right, sidecar_pb2.Label(request_id="r1", row=2, target=float("nan"))]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "row 2" in details, details
    # Nothing of the refused calls was counted: the first label still counts, once.
    reply = admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=[right]))
    assert reply.matched == 1
    # A whole-number target is the class it names.
    as_target = [
        sidecar_pb2.Label(request_id="r1", row=row, target=float(predicted[row])) for row in (1, 2)
    ]
    as_target.append(sidecar_pb2.Label(request_id="r1", row=3, target=float(1 - predicted[3])))
    reply = admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=as_target))
    assert reply.matched == 3
    assert _tally(plane) == (4, 3)
    # A label that joins nothing has no version to check against, and is taken.
    reply = admin.IngestLabels(
        sidecar_pb2.IngestLabelsRequest(
            labels=[sidecar_pb2.Label(request_id="never-served", target=0.5)]
        )
    )
    assert reply.matched == 0


@pytest.mark.parametrize("real_plane", [{"regression_tolerance": 0.01}], indirect=True)
def test_a_regression_version_takes_targets_and_classes_as_values(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
) -> None:
    plane = real_plane
    h = _serve(real_managed, plane, {1: regression_model(1)})
    assert h.manager.table.tolerance == 0.01  # the control plane's setting, sent in its state
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    values = output_array(_predict(h, "v", x), 0, np.float32)[:, 0].tolist()
    _indexed(h, 3)
    admin = _admin(h)
    code, details = _refused(admin, [sidecar_pb2.Label(request_id="v", row=0, target=np.inf)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "row 0" in details, details
    labels = [
        sidecar_pb2.Label(request_id="v", row=0, target=values[0]),
        sidecar_pb2.Label(request_id="v", row=1, target=values[1] + 0.5 + abs(values[1])),
        sidecar_pb2.Label(request_id="v", row=2, class_label=round(values[2]) + 1000),
    ]
    reply = admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels))
    assert reply.matched == 3
    assert _tally(plane) == (3, 1)


def test_a_label_log_that_cannot_write_refuses_the_call_and_keeps_nothing_of_it(
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    import pyarrow as pa

    from sidecar.predlog import list_log_files, read_file_batches

    plane = real_plane
    plane.deploy({1: artifacts[1]})
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        [
            *("--control-plane", plane.address, "--deployment", NAME),
            *("--listen", "127.0.0.1:0", "--device", "cpu"),
            *("--log-dir", str(log_dir), "--cache-dir", str(tmp_path / "cache")),
        ],
        stderr=tmp_path / "stderr.log",
        launch=FAILING_DISK,
    )
    try:
        port = ready["port"]
        x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
        reply = stub(port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id="a"))
        predicted = [int(v) for v in np.argmax(output_array(reply, 0, np.float32), axis=1)]
        admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        first = sidecar_pb2.Label(request_id="a", row=0, class_label=predicted[0])
        deadline = time.monotonic() + 10
        while admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=[first])).matched < 1:
            assert time.monotonic() < deadline, "the prediction was never indexed"
            time.sleep(0.05)
        second = sidecar_pb2.Label(request_id="a", row=1, class_label=predicted[1])
        # Far more than the 64 KiB a file may hold: the write fails part way.
        filler = [sidecar_pb2.Label(request_id=f"filler-{i}", class_label=1) for i in range(4000)]
        with pytest.raises(grpc.RpcError) as caught:
            admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=[second, *filler]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        info = error_info(caught.value)
        assert info is not None and info.reason == "LABEL_LOG_FAILED"
        assert "send them again" in caught.value.details()
        assert _tally(plane) == (1, 1)  # the refused call counted nothing
        # The same label sent again is taken, written and counted.
        reply = admin.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=[second]))
        assert (reply.accepted, reply.matched) == (1, 1)
        assert _tally(plane) == (2, 2)
        assert health_status(port) == "SERVING"
        assert stub(port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    files = list_log_files(log_dir, labels=True)
    logged = pa.Table.from_batches([b for f in files for b in read_file_batches(f)])
    ids = logged.column("request_id").to_pylist()
    assert not [i for i in ids if i.startswith("filler-")]
    assert ids.count("a") >= 2 and logged.column("row").to_pylist()[-1] == 1


def test_without_a_label_log_nothing_is_accepted_and_the_cli_says_why(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from modelplane.cli import main

    plane = real_plane
    h = _serve(real_managed, plane, {1: artifacts[1]})  # no prediction log, so no label log
    predicted = _classes(h, "n", 2, seed=0)
    _indexed(h, 2)
    reply = _admin(h).IngestLabels(
        sidecar_pb2.IngestLabelsRequest(
            labels=[sidecar_pb2.Label(request_id="n", row=0, class_label=predicted[0])]
        )
    )
    assert (reply.accepted, reply.matched) == (0, 1)
    assert _tally(plane) == (1, 1)  # joined and counted all the same
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(
        pa.table({"request_id": ["n", "other"], "row": [1, 0], "label": [predicted[1], 0]}),
        labels,
    )
    capsys.readouterr()
    code = main(["--output", "json", "labels", "send", str(labels), "--sidecar", h.address])
    captured = capsys.readouterr()
    assert code == 0
    out = json.loads(captured.out)
    assert out["sidecars"] == [
        {
            "sidecar": h.address,
            "outcome": "done",
            "delivered": 2,
            "accepted": 0,
            "matched": 1,
            "error": None,
        }
    ]
    assert "keeps no label log" in captured.err and "--log-dir" in captured.err


def test_labels_of_versions_that_left_the_table_are_reported_or_unmatched(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    import pyarrow as pa

    from sidecar.predlog import PredictionLogSettings, list_log_files, read_file_batches

    plane = real_plane
    plane.deploy({n: artifacts[n] for n in (1, 2, 3)})
    plane.canary(3, 100.0)
    log_dir = tmp_path / "log"
    h = real_managed(log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05))
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    s = stub(h.port)
    canary = s.ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id="c"))
    pinned = s.ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id="p", model_version="1"))
    assert (canary.model_version, pinned.model_version) == ("3", "1")
    _indexed(h, 4)
    # The canary of 3 is rolled back, and version 2 is promoted through a canary of its own:
    # versions 1 and 3 leave the table.
    plane.client.rollback_rollout(NAME)
    plane.canary(2, 50.0)
    promoted = plane.client.promote_rollout(NAME).generation
    deadline = time.monotonic() + 60
    while h.manager.table.generation != promoted and time.monotonic() < deadline:
        time.sleep(0.02)
    table = h.manager.table
    assert (table.champion.number, table.candidate) == (2, None)
    classes = {
        rid: np.argmax(output_array(reply, 0, np.float32), axis=1).tolist()
        for rid, reply in (("c", canary), ("p", pinned))
    }
    labels = [
        sidecar_pb2.Label(request_id=rid, row=row, class_label=classes[rid][row])
        for rid in ("c", "p")
        for row in (0, 1)
    ]
    seen = len(plane.reports)
    reply = _admin(h).IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels))
    # The old champion's rows cannot be reported (version 2 answers as champion now): they
    # are not matched. The ended canary's rows still are, under their version.
    assert (reply.accepted, reply.matched) == (4, 2)
    reports = plane.wait_reports(lambda rs: len(rs) >= seen + 3)
    labeled = [(a.arm, a.version, a.labeled, a.correct) for r in reports for a in r.arms]
    assert [a for a in labeled if a[2]] == [("candidate", 3, 2, 2)]
    assert all(len({a.arm for a in r.arms}) == len(r.arms) for r in reports)
    h.stop(5)
    files = list_log_files(log_dir, labels=True)
    table = pa.Table.from_batches([b for f in files for b in read_file_batches(f)])
    rows = {
        (r["request_id"], r["row"]): (r["matched"], r["arm"], r["model_version"])
        for r in table.to_pylist()
    }
    assert rows[("c", 0)] == rows[("c", 1)] == (True, "candidate", "3")
    assert rows[("p", 0)] == rows[("p", 1)] == (False, None, None)


def test_a_request_without_id_can_be_labeled_under_the_id_it_was_answered_with(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
    tmp_path: Path,
) -> None:
    import pyarrow as pa

    from sidecar.predlog import PredictionLogSettings, list_log_files, read_file_batches, read_logs

    plane = real_plane
    log_dir = tmp_path / "log"
    h = _serve(
        real_managed,
        plane,
        {1: artifacts[1]},
        log_settings=PredictionLogSettings(dir=log_dir, flush_interval=0.05),
    )
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    reply = _predict(h, "", x)
    assert reply.id
    long_id = "y" * (1 << 20)  # ids of any length join
    long_reply = _predict(h, long_id, x[:1])
    assert long_reply.id == long_id
    _indexed(h, 3)
    predicted = np.argmax(output_array(reply, 0, np.float32), axis=1).tolist()
    labels = [
        sidecar_pb2.Label(request_id=reply.id, row=row, class_label=predicted[row])
        for row in (0, 1)
    ]
    labels.append(sidecar_pb2.Label(request_id=long_id, class_label=predicted[0]))
    answer = _admin(h).IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels))
    assert (answer.accepted, answer.matched) == (3, 3)
    assert _tally(plane) == (3, 3)
    h.stop(5)
    logged = read_logs(log_dir).column("request_id").to_pylist()
    assert sorted(logged) == sorted([reply.id, reply.id, long_id])
    files = list_log_files(log_dir, labels=True)
    joined = pa.Table.from_batches([b for f in files for b in read_file_batches(f)])
    assert joined.column("matched").to_pylist() == [True, True, True]
