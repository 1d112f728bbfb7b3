"""A managed sidecar reconnects soon after a long control-plane outage ends.

While the control plane is away, the channel's connection attempts back off; gRPC's default
lets the wait between attempts grow to two minutes, so after a long outage the sidecar
stayed away for most of that long once the control plane was back. Here the control plane's
port is held by a listener that takes each connection attempt and closes it (as a control
plane that is restarting), until the channel has tried often enough that gRPC's default
backoff would wait over 13 s for the next attempt; then the control plane serves on the same
port again, and the sidecar's watch must resume well before that.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import threading
import time
from typing import Any

from control_plane_double import FakeControlPlane, state

from sidecar.managed.watch import Watcher

NAME = "fraud"
#: Connection attempts seen before the control plane comes back: gRPC's default backoff
#: (1 s x 1.6^n, +-20%) waits at least 0.8 x 1.6^6 = 13.4 s after the seventh.
ATTEMPTS = 7
#: How soon the watch must resume: the channel's next attempt within its 3 s (+20%)
#: backoff, the watcher's within its (here) 0.5 s, with room for a busy machine; gRPC's
#: default backoff takes over 13 s.
RESUME_WITHIN_S = 10.0


class _Refuser:
    """Holds a port: accepts each connection and closes it at once, counting them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The stopped control plane's server may hold the port a moment longer.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.listen(16)
        self.accepted = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()
            with self._cond:
                self.accepted += 1
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.accepted >= count, timeout)

    def close(self) -> None:
        # shutdown wakes the accepting thread; close alone may leave it blocked.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def test_the_watch_resumes_soon_after_a_long_outage_ends(
    managed: Any, plane: FakeControlPlane, artifacts: dict, monkeypatch: Any
) -> None:
    # The watcher's own backoff (up to 10 s) is not what this measures: keep it short.
    monkeypatch.setattr("sidecar.managed.server.Watcher", functools.partial(Watcher, cap=0.5))
    desired = state(NAME, 1, plane.versions(artifacts, 1), champion=1, interval_s=0.3)
    plane.push(desired)
    handle = managed()
    assert handle.wait_ready(60)
    port = plane.port
    plane.stop()
    refuser = _Refuser(port)
    try:
        # gRPC's default backoff needs about 26 s to get here, the bounded one about 14 s.
        assert refuser.wait_for(ATTEMPTS, 60), refuser.accepted
    finally:
        refuser.close()
    back = FakeControlPlane(port)
    try:
        back.blobs = dict(plane.blobs)
        back.push(desired)
        came_back = time.monotonic()
        while back.watchers == 0 and time.monotonic() - came_back < RESUME_WITHIN_S:
            time.sleep(0.05)
        assert back.watchers > 0, (
            f"the watch did not resume within {RESUME_WITHIN_S:g} s of the control plane's "
            f"return ({refuser.accepted} connection attempts while it was away)"
        )
        # The reports held during the outage follow.
        back.wait_reports(lambda reports: len(reports) > 0)
        assert handle.manager.table.champion.number == 1
    finally:
        back.stop()
