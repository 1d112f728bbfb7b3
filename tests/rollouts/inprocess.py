"""A real control plane and managed sidecars in the test's own process, for tests that look
inside the sidecar (its reporter, observer, watcher) or hold its observer thread; and a TCP
proxy whose connections can be made to drop every byte without closing, as a connection
whose node, NAT or load-balancer flow disappeared does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelplane import Client
from tests.controlplane.conftest import RunningControlPlane, start_controlplane


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Callable[..., RunningControlPlane]]:
    """Start a control plane on SQLite (reports every 0.3 s unless told): ``plane(**settings)``;
    stopped at teardown."""
    started: list[RunningControlPlane] = []

    def factory(**overrides: Any) -> RunningControlPlane:
        overrides.setdefault("report_interval_seconds", 0.3)
        cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", **overrides)
        started.append(cp)
        return cp

    yield factory
    for cp in reversed(started):
        cp.handle.stop(0)


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[Client]:
    """A client of a control plane of its own on each backend."""
    cp = start_controlplane(tmp_path, db_url)
    with cp.client() as c:
        yield c
    cp.handle.stop(0)


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process managed sidecars: ``managed(address, deployment, observers=None,
    log_dir=None, **settings)``, with a prediction log in ``log_dir`` when given; each is
    ready when returned; all stop at teardown (a test may stop one)."""
    from sidecar.predlog import PredictionLogSettings
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    handles: list[Any] = []

    def factory(
        address: str,
        deployment: str,
        observers: Any = None,
        log_dir: Path | None = None,
        **kw: Any,
    ) -> Any:
        kw.setdefault("listen", "127.0.0.1:0")
        kw.setdefault("device", "cpu")
        kw.setdefault("warmup_runs", 1)
        kw.setdefault("cache_dir", tmp_path / f"cache{len(handles)}")
        settings = SidecarSettings(control_plane=address, deployment=deployment, **kw)
        logs = None if log_dir is None else PredictionLogSettings(dir=log_dir, flush_interval=0.05)
        handle = start(settings, observers=observers, log_settings=logs)
        handles.append(handle)
        assert handle.wait_ready(60)
        return handle

    yield factory
    for h in reversed(handles):
        h.stop(0)


def client_of(cp: RunningControlPlane) -> Client:
    return Client(cp.address, principal="alice", timeout=30)


def spy_reports(reporter: Any) -> list[tuple[Any, str]]:
    """Every ReportWindow call of ``reporter``: (request, "OK" or the status code's name)."""
    calls: list[tuple[Any, str]] = []
    send = reporter._send

    def wrapped(request: Any) -> Any:
        try:
            response = send(request)
        except grpc.RpcError as exc:
            calls.append((request, exc.code().name))
            raise
        calls.append((request, "OK"))
        return response

    reporter._send = wrapped
    return calls


class FreezingProxy:
    """A TCP proxy to ``target``; :meth:`freeze` makes its open connections swallow every
    byte in both directions without closing them, while new connections work as before."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._conns: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._sock.accept()
                up = socket.create_connection(self._target)
            except OSError:
                return
            conn: dict[str, Any] = {"frozen": False, "socks": (down, up)}
            with self._lock:
                self._conns.append(conn)
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b, conn), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, conn: dict[str, Any]) -> None:
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                return
            if not data:
                return
            if conn["frozen"]:
                continue
            try:
                b.sendall(data)
            except OSError:
                return

    def freeze(self) -> int:
        """Freeze every open connection; returns how many."""
        with self._lock:
            for conn in self._conns:
                conn["frozen"] = True
            return len(self._conns)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                for s in conn["socks"]:
                    with contextlib.suppress(OSError):
                        s.close()
