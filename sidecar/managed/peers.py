"""Labels across the workers of one managed sidecar (``--workers N``).

The workers share one port, so an ``IngestLabels`` call reaches one of them, while the rows
its labels name were served by any. Each worker therefore serves ``SidecarWorkerService`` on a
Unix socket of its own, ``<pid>.sock`` in a folder its supervisor made for them (mode 0700),
and the worker a call reaches joins the labels with its own predictions and, through that
service, with every other worker's:

1. every worker checks the labels against the predictions it served (``check_only``): one
   label that is invalid for its row refuses the call before any worker counts anything;
2. every other worker joins them: it counts the first label of each of its rows in its own
   open window (its reports carry them, as a pod's do) and answers which labels joined what;
3. the receiving worker joins its own rows, and writes every label once to the label log,
   with the prediction it joined on whichever worker that was.

A worker that cannot be reached (it stopped, or died: the supervisor then stops the
sidecar) fails the call with UNAVAILABLE (``WORKER_UNREACHABLE``) before anything is logged:
each worker leaves a ``<pid>.worker`` file beside its socket once it serves, which stays until
the supervisor removes the folder (gRPC removes the socket when the worker stops), so a
stopped worker is refused, never overlooked. Labels the other workers counted by then stay counted;
sent again, they are matched and logged but not counted twice (a row's first label is the
one counted). A worker that fails on them otherwise fails the call with INTERNAL
(``WORKER_FAILED``).

A label is checked in the first step, so in the second its row's prediction may have
changed (a request id predicted again by another version meanwhile): a label no longer
valid for it joins nothing there rather than refusing a call other workers counted already.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelplane.errors import (
    Internal,
    ModelplaneError,
    Unavailable,
    abort,
    error_info,
    from_rpc_error,
)
from modelplane.server.lifecycle import MAX_MESSAGE_BYTES, grpc_options
from modelplane.server.supervisor import hold_dir
from modelplane.v1 import sidecar_workers_pb2 as pb
from modelplane.v1 import sidecar_workers_pb2_grpc as pb_grpc
from sidecar.managed.labels import Joined

SOCKET_SUFFIX = ".sock"
#: A worker that served in the folder: ``<name>.worker`` beside ``<name>.sock``.
MARKER_SUFFIX = ".worker"
#: How long a worker waits for another worker's answer (a join of the largest call, 100,000
#: labels, takes well under a second).
CALL_TIMEOUT_S = 30.0
_THREADS = 2
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class WorkerPeers:
    """Calls the other workers' ``SidecarWorkerService``: the socket of every worker that
    has left its ``*.worker`` file in ``folder`` but this one, as the folder holds them at
    the time of the call."""

    def __init__(self, folder: Path, own: Path) -> None:
        self.folder = folder
        self.own = own
        self._stubs: dict[Path, tuple[grpc.Channel, Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _peers(self) -> list[tuple[Path, Any]]:
        paths = sorted(
            path
            for path in (
                marker.with_suffix(SOCKET_SUFFIX)
                for marker in self.folder.glob("*" + MARKER_SUFFIX)
            )
            if path != self.own
        )
        with self._lock:
            if self._closed:
                raise Unavailable("the sidecar is stopping", reason="NOT_READY")
            for gone in set(self._stubs) - set(paths):
                self._stubs.pop(gone)[0].close()
            for path in paths:
                if path not in self._stubs:
                    channel = grpc.insecure_channel(f"unix:{path}", options=_CHANNEL_OPTIONS)
                    self._stubs[path] = (channel, pb_grpc.SidecarWorkerServiceStub(channel))
            return [(path, self._stubs[path][1]) for path in paths]

    def join(self, labels: Any, *, check_only: bool) -> dict[int, Joined]:
        """Have every other worker check (``check_only``) or join ``labels``; returns, by the
        label's index, what each joined (the first worker's answer for a row two served).
        Raises the first refusal a worker answered, else UNAVAILABLE for one not reached,
        once every call has ended."""
        request = pb.JoinLabelsRequest(labels=labels, check_only=check_only)
        calls = [
            (path, stub.JoinLabels.future(request, timeout=CALL_TIMEOUT_S))
            for path, stub in self._peers()
        ]
        joined: dict[int, Joined] = {}
        refused: ModelplaneError | None = None
        unreachable: ModelplaneError | None = None
        for path, call in calls:
            try:
                response = call.result()
            except grpc.RpcError as exc:
                if error_info(exc) is not None:
                    refused = refused or from_rpc_error(exc)
                elif exc.code() in _UNREACHABLE:  # type: ignore[attr-defined]
                    unreachable = unreachable or _unreachable(path, exc)
                else:
                    refused = refused or _failed(path, exc)
                continue
            for item in response.joined:
                joined.setdefault(
                    int(item.index), Joined(item.arm, int(item.version), bool(item.correct))
                )
        if refused is not None:
            raise refused
        if unreachable is not None:
            raise unreachable
        return joined

    def close(self) -> None:
        """Close every channel; later calls are UNAVAILABLE."""
        with self._lock:
            self._closed = True
            stubs, self._stubs = self._stubs, {}
        for channel, _stub in stubs.values():
            channel.close()


#: Codes of a worker that could not be reached or did not answer in time.
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def _failed(path: Path, exc: grpc.RpcError) -> Internal:
    code = exc.code()  # type: ignore[attr-defined]
    return Internal(
        f"worker {path.stem} of this sidecar failed to join the labels ({code.name}: "
        f"{exc.details()}); none of these labels was logged (its log has the details)",  # type: ignore[attr-defined]
        reason="WORKER_FAILED",
        metadata={"worker_pid": path.stem},
    )


def _unreachable(path: Path, exc: grpc.RpcError) -> Unavailable:
    code = exc.code()  # type: ignore[attr-defined]
    return Unavailable(
        f"worker {path.stem} of this sidecar could not be reached ({code.name}: "
        f"{exc.details()}), so the labels of the predictions it served could not be joined; "  # type: ignore[attr-defined]
        "none of these labels was logged: send them again (labels already counted are not "
        "counted twice)",
        reason="WORKER_UNREACHABLE",
        metadata={"worker_pid": path.stem},
    )


class WorkerServicer(pb_grpc.SidecarWorkerServiceServicer):
    """Answers another worker's ``JoinLabels`` from this worker's label ingestor."""

    def __init__(self, labels: Any) -> None:
        self.labels = labels

    def JoinLabels(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            joined = self.labels.join_for_peer(request.labels, check_only=request.check_only)
        except ModelplaneError as err:
            abort(context, err)
        return pb.JoinLabelsResponse(
            joined=[
                pb.JoinedLabel(index=i, arm=j.arm, version=j.version, correct=j.correct)
                for i, j in joined.items()
            ]
        )


@dataclass
class PeerEndpoint:
    """This worker's ``SidecarWorkerService`` and its client of the others."""

    server: grpc.Server
    path: Path
    peers: WorkerPeers
    #: This worker's shared lock on the folder (so that the next supervisor's sweep leaves
    #: it while a worker of a killed one still drains); None for a folder without a lock.
    lock: int | None = None

    def close(self) -> None:
        """Stop answering other workers and close the calls to them. The ``.worker`` file
        stays: a worker that calls here now is refused (``WORKER_UNREACHABLE``), rather
        than passing over the rows this worker served (the supervisor removes the folder)."""
        self.server.stop(0)
        self.peers.close()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def open_peer_endpoint(folder: Path, labels: Any, name: str | None = None) -> PeerEndpoint:
    """Serve ``labels`` (a :class:`~sidecar.managed.labels.LabelIngestor`) to the other
    workers on ``folder/<name>.sock`` (``name``: this process's pid unless given)."""
    # Held first: the next supervisor's sweep never takes a folder a worker is starting in.
    lock = hold_dir(str(folder))
    path = folder / f"{name or os.getpid()}{SOCKET_SUFFIX}"
    path.unlink(missing_ok=True)  # left by an earlier process of this pid
    server = grpc.server(
        futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="worker-peers"),
        options=grpc_options(reuse_port=False),
    )
    pb_grpc.add_SidecarWorkerServiceServicer_to_server(WorkerServicer(labels), server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    path.with_suffix(MARKER_SUFFIX).touch()
    return PeerEndpoint(server, path, WorkerPeers(folder, path), lock)
