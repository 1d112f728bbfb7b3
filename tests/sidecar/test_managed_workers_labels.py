"""Labels on a managed sidecar of several workers (``--workers 2``): one ``IngestLabels`` call,
whichever worker it lands on, joins every worker's predictions; each label is logged once,
counted once in the reports of the worker that served its row; and a label invalid for a row
one worker served refuses the call before any worker counts or logs anything. Plus the
ingestor's answer when another worker cannot be reached."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from control_plane_double import FakeControlPlane, state
from sidecar_helpers import output_array, raw_request, spawn_sidecar

from modelplane.errors import InvalidArgument, Unavailable, error_info
from modelplane.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.predlog import list_log_files, read_file_batches

NAME = "fraud"


def _labels(pairs: list[tuple[str, int]], **value: Any) -> Any:
    return sidecar_pb2.IngestLabelsRequest(
        labels=[sidecar_pb2.Label(request_id=rid, row=0, **value) for rid, _ in pairs]
    )


def _channel(port: int) -> grpc.Channel:
    """A channel on a connection of its own (never one another channel opened), so that
    channels spread over the workers."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def _label_log(log_dir: Path) -> pa.Table | None:
    batches = [b for f in list_log_files(log_dir, labels=True) for b in read_file_batches(f)]
    return pa.Table.from_batches(batches) if batches else None


def _labeled(reports: list[Any]) -> int:
    return sum(a.labeled for r in reports for a in r.arms)


@pytest.mark.slow
def test_one_call_joins_the_labels_of_every_workers_predictions(
    plane: FakeControlPlane, artifacts: dict[int, bytes], tmp_path: Path
) -> None:
    sha = plane.add_blob(artifacts[1])
    plane.push(state(NAME, 1, {1: (sha, len(artifacts[1]), "")}, champion=1))
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        [
            "--control-plane",
            plane.address,
            "--deployment",
            NAME,
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--log-dir",
            str(log_dir),
        ],
        timeout=180,
        stderr=tmp_path / "stderr.log",
    )
    try:
        predicted: list[tuple[str, int]] = []  # (request id, predicted class)
        for k in range(12):  # fresh channels spread over the workers
            channel = _channel(ready["port"])
            s = oip_pb2_grpc.GRPCInferenceServiceStub(channel)
            for i in range(5):
                rid = f"req-{k}-{i}"
                x = np.random.default_rng(k * 10 + i).standard_normal((1, 8)).astype(np.float32)
                reply = s.ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id=rid))
                predicted.append((rid, int(np.argmax(output_array(reply, 0, np.float32)))))
            channel.close()
        total = len(predicted)
        served = plane.wait_reports(
            lambda rs: sum(a.requests for r in rs for a in r.arms) >= total, timeout=30
        )
        per_replica: dict[str, int] = {}
        for r in served:
            per_replica[r.replica] = per_replica.get(r.replica, 0) + sum(a.requests for a in r.arms)
        assert len(per_replica) == 2 and all(per_replica.values()), per_replica

        # A call with one label its row's classifier cannot take (a fractional target) is
        # refused whole, whichever worker served that row and whichever the call reaches.
        for _ in range(6):
            request = _labels(predicted[:-1], class_label=0)
            request.labels.add(request_id=predicted[-1][0], row=0, target=0.5)
            with _channel(ready["port"]) as channel, pytest.raises(grpc.RpcError) as caught:
                sidecar_pb2_grpc.SidecarAdminServiceStub(channel).IngestLabels(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = error_info(caught.value)
            assert info is not None and info.reason == "LABEL_TYPE_MISMATCH"
        assert _label_log(log_dir) is None
        reports = plane.wait_reports(lambda rs: len(rs) >= len(served) + 4, timeout=30)
        assert _labeled(reports) == 0

        # One call with every label: all join, whichever worker it reached.
        truth = [(rid, cls if j % 3 else 1 - cls) for j, (rid, cls) in enumerate(predicted)]
        request = sidecar_pb2.IngestLabelsRequest(
            labels=[sidecar_pb2.Label(request_id=rid, row=0, class_label=c) for rid, c in truth]
        )
        admin = sidecar_pb2_grpc.SidecarAdminServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{ready['port']}")
        )
        answer = admin.IngestLabels(request, timeout=30)
        assert (answer.accepted, answer.matched) == (total, total)
        # Logged once each, with the prediction it joined, on whichever worker that was.
        table = _label_log(log_dir)
        assert table is not None and table.num_rows == total
        assert sorted(table.column("request_id").to_pylist()) == sorted(r for r, _ in predicted)
        assert all(table.column("matched").to_pylist())
        assert set(table.column("model_version").to_pylist()) == {"1"}
        rights = dict(
            zip(
                table.column("request_id").to_pylist(),
                table.column("correct").to_pylist(),
                strict=True,
            )
        )
        assert rights == {rid: j % 3 != 0 for j, (rid, _) in enumerate(predicted)}
        # Counted once, each by the worker that served the row.
        reports = plane.wait_reports(lambda rs: _labeled(rs) >= total, timeout=30)
        assert _labeled(reports) == total
        assert sum(a.correct for r in reports for a in r.arms) == sum(rights.values())
        labeled_by = {r.replica for r in reports if any(a.labeled for a in r.arms)}
        assert len(labeled_by) == 2

        # Sent again: matched and logged again, counted no more.
        answer = admin.IngestLabels(request, timeout=30)
        assert (answer.accepted, answer.matched) == (total, total)
        reports = plane.wait_reports(lambda rs: len(rs) >= len(reports) + 4, timeout=30)
        assert _labeled(reports) == total
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # The workers' sockets went with the sidecar.
    assert not list(Path("/tmp").glob(f"modelplane-workers-*/{proc.pid}.sock"))


def test_a_worker_that_cannot_be_reached_fails_the_call_before_anything_is_logged(
    tmp_path: Path,
) -> None:
    from sidecar.managed.labels import LabelIngestor, LabelLog, Predicted, PredictionIndex
    from sidecar.managed.peers import WorkerPeers

    peers_dir = tmp_path / "peers"
    peers_dir.mkdir()
    # A worker that served here and died: its file stays, no process serves its socket.
    (peers_dir / "999999.worker").touch()
    index = PredictionIndex(100)
    index.add(["r"], [1], [Predicted("champion", 1, 1, False, 0.0)])
    counts = _Counts()
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    ingestor = LabelIngestor(
        index, counts, LabelLog(log_dir), peers=WorkerPeers(peers_dir, peers_dir / "1.sock")
    )
    with pytest.raises(Unavailable) as caught:
        ingestor.ingest(_labels([("r", 0)], class_label=1).labels)
    assert caught.value.reason == "WORKER_UNREACHABLE"
    assert "999999" in str(caught.value)
    assert counts.added == [] and not list_log_files(log_dir, labels=True)
    # The row is not marked: once the worker is gone from the folder, the label counts.
    (peers_dir / "999999.worker").unlink()
    assert ingestor.ingest(_labels([("r", 0)], class_label=1).labels) == (1, 1)
    assert counts.added == [("champion", 1, 1, 1)]


class _Counts:
    """What a worker's observer does for labels: every version reportable, counts kept."""

    def __init__(self) -> None:
        self.added: list[Any] = []

    def reportable(self, arm: str, version: int) -> bool:
        return True

    def add_labeled(self, *args: Any) -> None:
        self.added.append(args)


def _workers(tmp_path: Path, count: int = 2) -> list[Any]:
    """``count`` label ingestors serving each other over real Unix sockets, as the workers of
    one sidecar do (in one process here, so named 1, 2, ... instead of by pid)."""
    from sidecar.managed.labels import LabelIngestor, LabelLog, PredictionIndex
    from sidecar.managed.peers import open_peer_endpoint

    folder = tmp_path / "peers"
    folder.mkdir(exist_ok=True)
    log_dir = tmp_path / "log"
    log_dir.mkdir(exist_ok=True)
    out = []
    for n in range(1, count + 1):
        ingestor = LabelIngestor(PredictionIndex(100), _Counts(), LabelLog(log_dir))
        endpoint = open_peer_endpoint(folder, ingestor, name=str(n))
        ingestor.peers = endpoint.peers
        out.append((ingestor, endpoint))
    return out


def test_a_stopped_worker_is_refused_not_passed_over(tmp_path: Path) -> None:
    """The labels of rows a stopped worker served cannot join: the call fails (to be sent
    again to a sidecar whose workers all run), rather than answer them unmatched."""
    from sidecar.managed.labels import Predicted

    (first, _), (second, endpoint) = _workers(tmp_path)
    second.index.add(["r"], [1], [Predicted("champion", 1, 1, False, 0.0)])
    endpoint.close()
    with pytest.raises(Unavailable) as caught:
        first.ingest(_labels([("r", 0)], class_label=1).labels)
    assert caught.value.reason == "WORKER_UNREACHABLE"
    assert second.counts.added == [] and not list_log_files(tmp_path / "log", labels=True)


def test_a_worker_that_fails_on_the_labels_is_an_internal_error(tmp_path: Path) -> None:
    """Not a worker out of reach (which says to send again): INTERNAL, WORKER_FAILED."""
    from modelplane.errors import Internal

    (first, _), (second, _) = _workers(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    second.join_for_peer = broken
    with pytest.raises(Internal) as caught:
        first.ingest(_labels([("r", 0)], class_label=1).labels)
    assert caught.value.reason == "WORKER_FAILED"
    assert not list_log_files(tmp_path / "log", labels=True)


def test_a_label_checked_already_that_no_longer_fits_its_row_joins_nothing(
    tmp_path: Path,
) -> None:
    """Between the check and the join a row may be predicted again by a classifier: in the
    join its fractional target joins nothing (the call was checked; others may have counted)."""
    from sidecar.managed.labels import Predicted

    _, (second, _) = _workers(tmp_path)
    second.index.add(["r"], [1], [Predicted("champion", 2, 1, False, 0.0)])
    labels = _labels([("r", 0)], target=0.5).labels
    assert second.join_for_peer(labels, check_only=False) == {}
    assert second.counts.added == []
    with pytest.raises(InvalidArgument) as caught:
        second.join_for_peer(labels, check_only=True)
    assert caught.value.reason == "LABEL_TYPE_MISMATCH"
