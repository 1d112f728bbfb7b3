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

A worker that cannot be reached (it is stopping, or died: the supervisor then stops the
sidecar) fails the call with UNAVAILABLE (``WORKER_UNREACHABLE``) before anything is logged.
Labels the other workers counted by then stay counted; sent again, they are matched and
logged but not counted twice (a row's first label is the one counted).
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from modelplane.errors import (
    ModelplaneError,
    Unavailable,
    error_info,
    from_rpc_error,
    to_grpc_status,
)
from modelplane.server.lifecycle import MAX_MESSAGE_BYTES, grpc_options
from modelplane.v1 import sidecar_workers_pb2 as pb
from modelplane.v1 import sidecar_workers_pb2_grpc as pb_grpc

SOCKET_SUFFIX = ".sock"
#: How long a worker waits for another worker's answer (a join of the largest call, 100,000
#: labels, takes well under a second).
CALL_TIMEOUT_S = 30.0
_THREADS = 2
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True, slots=True)
class Joined:
    """The prediction a label joined on another worker."""

    arm: str
    version: int
    correct: bool


class WorkerPeers:
    """Calls the other workers' ``SidecarWorkerService``: every ``*.sock`` in ``folder`` but
    this worker's own, as the folder holds them at the time of the call."""

    def __init__(self, folder: Path, own: Path) -> None:
        self.folder = folder
        self.own = own
        self._stubs: dict[Path, tuple[grpc.Channel, Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _peers(self) -> list[tuple[Path, Any]]:
        paths = sorted(
            p for p in self.folder.glob("*" + SOCKET_SUFFIX) if p.resolve() != self.own.resolve()
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
                else:
                    unreachable = unreachable or _unreachable(path, exc)
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
            _abort(context, err)
        return pb.JoinLabelsResponse(
            joined=[
                pb.JoinedLabel(index=i, arm=j.arm, version=j.version, correct=j.correct)
                for i, j in joined.items()
            ]
        )


def _abort(context: grpc.ServicerContext, err: ModelplaneError) -> NoReturn:
    context.abort_with_status(to_grpc_status(err))
    raise AssertionError("abort_with_status returned")


@dataclass
class PeerEndpoint:
    """This worker's ``SidecarWorkerService`` and its client of the others."""

    server: grpc.Server
    path: Path
    peers: WorkerPeers

    def close(self) -> None:
        """Stop answering other workers (the socket file goes first, so that no worker
        starts a call here any more) and close the calls to them."""
        self.path.unlink(missing_ok=True)
        self.server.stop(0)
        self.peers.close()


def open_peer_endpoint(folder: Path, labels: Any) -> PeerEndpoint:
    """Serve ``labels`` (a :class:`~sidecar.managed.labels.LabelIngestor`) to the other
    workers on ``folder/<pid>.sock``."""
    path = folder / f"{os.getpid()}{SOCKET_SUFFIX}"
    path.unlink(missing_ok=True)  # left by an earlier process of this pid
    server = grpc.server(
        futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="worker-peers"),
        options=grpc_options(reuse_port=False),
    )
    pb_grpc.add_SidecarWorkerServiceServicer_to_server(WorkerServicer(labels), server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return PeerEndpoint(server, path, WorkerPeers(folder, path))
