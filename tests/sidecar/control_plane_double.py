"""A small in-test stand-in for the control plane's DeploymentService and BlobService, kept
for the tests that need a control plane that misbehaves, which the real one will not do on
demand; tests that only need a control plane run against a real one (:mod:`real_plane`).

It streams desired states that a test pushes (repeating the current one every ``heartbeat``
seconds, as the real one does), records every ReportWindow, and serves blobs from memory
(optionally corrupted). On demand it refuses reports with any status code or holds them in
flight (``refuse``, ``refuse_reports``), refuses or breaks watch streams (``refuse_watch``,
:meth:`break_watch`), falls silent on them (:meth:`mute_watch`), serves corrupt blobs
(``corrupt``), stops and comes back on the same port, and streams desired states the real
one would refuse or that it sends only on its own schedule (a state it cannot serve, a
rollout state set by hand, a tolerance of 0, baseline profiles built by the test, one the
registry refuses to register included).
It also records every watch stream opened and the replica each names (``watchers``,
``watch_requests``), which the real one keeps no record of.

Used by test_managed_reconnect, test_managed_report_faults, test_managed_watch_faults,
test_managed_unloadable, test_managed_sidecar, test_managed_bad_state, test_managed_renewal,
test_managed_tolerance, test_managed_baseline_mismatch (a baseline profiling a feature the
model's inputs do not provide, which the real registry refuses as BASELINE_MISMATCH),
test_managed_metrics (its bind-failure and workers tests read the watch records), and the
managed tests not yet moved to a real control plane (test_managed_admission,
test_managed_hub_backpressure).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from modelplane.v1 import blobs_pb2, blobs_pb2_grpc, deployments_pb2, deployments_pb2_grpc


class _Deployments(deployments_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, plane: FakeControlPlane) -> None:
        self.plane = plane

    def WatchDeployment(self, request: Any, context: grpc.ServicerContext) -> Any:
        plane = self.plane
        with plane.cond:
            plane.watchers += 1
            plane.watch_requests.append(request)
            epoch = plane.break_streams
            muted = plane.muted
        sent = -1
        last = 0.0
        while context.is_active():
            with plane.cond:
                if plane.refuse_watch is not None:
                    context.abort(plane.refuse_watch, "control plane double refuses the watch")
                if plane.break_streams > epoch:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "stream broken by the test")
                state, version = plane.state, plane.version
                due = time.monotonic() >= last + plane.heartbeat
                if plane.muted > muted or state is None or (version == sent and not due):
                    plane.cond.wait(0.2)
                    continue
            sent = version
            last = time.monotonic()
            yield state

    def ReportWindow(self, request: Any, context: grpc.ServicerContext) -> Any:
        plane = self.plane
        with plane.cond:
            if plane.refuse_reports:
                context.abort(grpc.StatusCode.UNAVAILABLE, "reports refused by the test")
            code = plane.refuse(request) if plane.refuse is not None else None
            if code is not None:
                plane.refused.append(request)
                plane.cond.notify_all()
                context.abort(code, f"report refused by the test ({code.name})")
            seen = (request.replica, request.sequence) in plane.seen
            plane.seen.add((request.replica, request.sequence))
            if not seen:
                plane.reports.append(request)
            plane.cond.notify_all()
            generation = plane.state.generation if plane.state is not None else 0
        return deployments_pb2.ReportWindowResponse(generation=generation, accepted=not seen)


class _Blobs(blobs_pb2_grpc.BlobServiceServicer):
    def __init__(self, plane: FakeControlPlane) -> None:
        self.plane = plane

    def DownloadBlob(self, request: Any, context: grpc.ServicerContext) -> Any:
        sha = request.name.removeprefix("blobs/")
        with self.plane.cond:
            self.plane.downloads.append(sha)
            data = self.plane.blobs.get(sha)
            if sha in self.plane.corrupt and data is not None:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {sha}")
            return
        for i in range(0, len(data), 64 << 10):
            yield blobs_pb2.DownloadBlobResponse(chunk=data[i : i + (64 << 10)])


class FakeControlPlane:
    """A gRPC server on a loopback port (``port``; 0: a free one) with the two services
    sidecars call."""

    def __init__(self, port: int = 0) -> None:
        self.cond = threading.Condition()
        self.state: Any = None
        self.version = 0
        self.blobs: dict[str, bytes] = {}
        self.corrupt: set[str] = set()
        self.downloads: list[str] = []
        self.reports: list[Any] = []
        self.seen: set[tuple[str, int]] = set()
        self.watch_requests: list[Any] = []
        self.watchers = 0
        self.refuse_reports = False
        #: Decides per report: a status code to refuse it with, or None to take it.
        self.refuse: Callable[[Any], grpc.StatusCode | None] | None = None
        self.refused: list[Any] = []
        self.refuse_watch: grpc.StatusCode | None = None
        self.break_streams = 0
        #: Watch streams opened before the last :meth:`mute_watch` send nothing more.
        self.muted = 0
        #: Seconds between repeats of an unchanged state on a watch stream.
        self.heartbeat = 1.0
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        deployments_pb2_grpc.add_DeploymentServiceServicer_to_server(
            _Deployments(self), self.server
        )
        blobs_pb2_grpc.add_BlobServiceServicer_to_server(_Blobs(self), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"could not listen on 127.0.0.1:{port}"
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_blob(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        with self.cond:
            self.blobs[sha] = data
        return sha

    def versions(self, artifacts: dict[int, bytes], *numbers: int) -> dict[int, Any]:
        """The versions ``numbers`` of ``artifacts`` stored, as :func:`state` takes them."""
        return {n: (self.add_blob(artifacts[n]), len(artifacts[n]), "") for n in numbers}

    def push(self, state: Any) -> None:
        """Make ``state`` the desired state streamed to every watcher."""
        with self.cond:
            self.state = state
            self.version += 1
            self.cond.notify_all()

    def break_watch(self) -> None:
        """End every open watch stream with UNAVAILABLE once."""
        with self.cond:
            self.break_streams += 1
            self.cond.notify_all()

    def mute_watch(self) -> None:
        """Make every open watch stream fall silent (open, but sending nothing more), as a
        dead connection does; streams opened later are served as usual."""
        with self.cond:
            self.muted += 1
            self.cond.notify_all()

    def wait_reports(self, predicate: Any, timeout: float = 20.0) -> list[Any]:
        """Wait until ``predicate(reports)`` holds; returns the reports."""
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.reports), timeout)
            assert ok, f"reports never satisfied the condition: {len(self.reports)} received"
            return list(self.reports)

    def stop(self) -> None:
        self.server.stop(0)


def state(
    name: str,
    generation: int,
    versions: dict[int, tuple[str, int, str]],
    champion: int,
    candidate: int = 0,
    percent: float = 0.0,
    shadow: float = 0.0,
    rollout_id: str = "",
    interval_s: float = 0.3,
    tolerance: float = 0.0,
    rollout_state: int = 0,
    created_s: float | None = None,
    heartbeat_s: float | None = None,
) -> Any:
    """A DeploymentState: ``versions`` maps number -> (artifact sha, size, baseline sha);
    ``created_s``: the deployment's create_time (seconds since the epoch); ``heartbeat_s``: the
    heartbeat interval the state announces."""
    message = deployments_pb2.DeploymentState(
        name=f"deployments/{name}",
        generation=generation,
        model=f"models/{name}",
        champion_version=champion,
        candidate_version=candidate,
        candidate_percent=percent,
        shadow_fraction=shadow,
        rollout_id=rollout_id,
        rollout_state=rollout_state,
        regression_tolerance=tolerance,
    )
    for number, (sha, size, baseline) in versions.items():
        message.versions.add(
            version=number,
            name=f"models/{name}/versions/{number}",
            artifact_sha256=sha,
            artifact_size_bytes=size,
            baseline_sha256=baseline,
        )
    message.report_interval.FromNanoseconds(int(interval_s * 1e9))
    if created_s is not None:
        message.create_time.FromNanoseconds(int(created_s * 1e9))
    if heartbeat_s is not None:
        message.heartbeat_interval.FromNanoseconds(int(heartbeat_s * 1e9))
    return message
