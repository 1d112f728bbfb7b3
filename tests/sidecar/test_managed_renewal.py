"""A managed sidecar's connection to the control plane (the double) renewed, as the watcher
does when its stream went silent: calls started on the old connection go on to their end, as
the renewal may have been needless and a download may take minutes; later calls use the new
connection. The old connection is closed once they end, at the next renewal at the latest,
and at stop."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from control_plane_double import FakeControlPlane
from sidecar_helpers import until

from modelplane.v1 import blobs_pb2, deployments_pb2
from sidecar.managed.server import ControlPlane
from sidecar.settings import SidecarSettings

pytestmark = pytest.mark.timeout(60)

BLOB = os.urandom(1 << 20)  # 16 chunks


@pytest.fixture
def control_plane(plane: FakeControlPlane) -> Iterator[ControlPlane]:
    cp = ControlPlane(SidecarSettings(control_plane=plane.address, deployment="fraud"))
    yield cp
    cp.close()


def _download(cp: ControlPlane, sha: str) -> Any:
    return cp.DownloadBlob(blobs_pb2.DownloadBlobRequest(name=f"blobs/{sha}"), timeout=30)


def _closed(channel: grpc.Channel) -> bool:
    try:
        channel.unary_unary("/none/None")(b"", timeout=0.01)
    except ValueError:  # "Cannot invoke RPC on closed channel!"
        return True
    except grpc.RpcError:
        return False
    return False


def test_a_download_goes_on_across_a_renewal(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    sha = plane.add_blob(BLOB)
    call = _download(control_plane, sha)
    first = next(call).chunk
    control_plane.renew()
    # Later calls use the new connection while the download reads on the old one.
    assert b"".join(r.chunk for r in _download(control_plane, sha)) == BLOB
    assert first + b"".join(r.chunk for r in call) == BLOB


def test_the_old_connection_is_closed_once_its_calls_end(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    sha = plane.add_blob(BLOB)
    call = _download(control_plane, sha)
    next(call)
    old = control_plane._current.channel
    control_plane.renew()
    assert not _closed(old)
    assert sum(1 for _ in call) == 15
    until(lambda: _closed(old))


def test_a_report_goes_on_across_a_renewal(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    arrived = threading.Event()
    go_on = threading.Event()

    def hold(request: Any) -> None:
        arrived.set()
        plane.cond.wait_for(go_on.is_set, 20)  # lets the condition go meanwhile
        return None

    plane.refuse = hold
    result: list[Any] = []

    def report() -> None:
        request = deployments_pb2.ReportWindowRequest(
            name="deployments/fraud", replica="r", sequence=1
        )
        try:
            result.append(control_plane.ReportWindow(request, timeout=30))
        except grpc.RpcError as exc:
            result.append(exc.code())

    thread = threading.Thread(target=report)
    thread.start()
    assert arrived.wait(20)
    control_plane.renew()
    with plane.cond:
        go_on.set()
        plane.cond.notify_all()
    thread.join(30)
    assert len(result) == 1 and not isinstance(result[0], grpc.StatusCode), result
    assert result[0].accepted


def test_at_most_one_old_connection_is_kept(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    sha = plane.add_blob(BLOB)
    first = _download(control_plane, sha)
    next(first)
    control_plane.renew()
    second = _download(control_plane, sha)
    next(second)
    control_plane.renew()  # closes the first connection, keeps the second
    with pytest.raises(grpc.RpcError) as ended:
        for _ in first:
            pass
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    assert sum(1 for _ in second) == 15
    assert b"".join(r.chunk for r in _download(control_plane, sha)) == BLOB


def test_stopping_closes_the_old_connection_too(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    sha = plane.add_blob(BLOB)
    call = _download(control_plane, sha)
    next(call)
    old = control_plane._current.channel
    control_plane.renew()
    new = control_plane._current.channel
    control_plane.close()
    assert _closed(old) and _closed(new)
    with pytest.raises(grpc.RpcError) as ended:
        for _ in call:
            pass
    assert ended.value.code() == grpc.StatusCode.CANCELLED


def test_a_dropped_download_does_not_hold_the_old_connection(
    plane: FakeControlPlane, control_plane: ControlPlane
) -> None:
    """A download left unfinished is cancelled when dropped, as a plain call is."""
    sha = plane.add_blob(BLOB)
    call = _download(control_plane, sha)
    next(call)
    old = control_plane._current.channel
    control_plane.renew()
    del call
    until(lambda: _closed(old))
