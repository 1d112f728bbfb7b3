"""What the retraining-hook tests share: loopback TCP servers that answer a byte at a time,
and a stand-in for the hooks' logger that keeps what they log."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from controlplane.rollouts import hooks


@contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on loopback running ``handle`` on each connection in a thread of its own,
    for the ``with`` block; gives its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        srv.close()


def drip(conn: socket.socket, head: bytes) -> None:
    """Read the first request bytes, then send ``head`` a byte at a time and a zero byte
    every 0.2 s after it, for two minutes or until the peer goes."""
    with conn:
        try:
            conn.recv(65536)
            for byte in head:
                conn.send(bytes([byte]))
                time.sleep(0.2)
            for _ in range(600):
                conn.send(b"\0")
                time.sleep(0.2)
        except OSError:
            return


class HookLog:
    """Stands in for the hooks' logger: keeps what they log."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _keep(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    info = warning = error = exception = _keep

    def wait_for(self, event: str) -> dict[str, Any]:
        """The first ``event`` logged, waiting up to 30 s for it."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [e for e in self.events if e["event"] == event]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} in {self.events}")


@pytest.fixture
def hook_log(monkeypatch: pytest.MonkeyPatch) -> HookLog:
    """The hooks' logger replaced by a ``HookLog`` for the test."""
    keeper = HookLog()
    monkeypatch.setattr(hooks, "log", keeper)
    return keeper
