"""``hook_timeout_seconds`` bounds a retraining hook in all: an HTTPS webhook's name lookup,
connect, proxy tunnel and TLS handshake count against it as much as its answer does, and a
timed-out command is killed with every process of its session, whatever process group they
moved to, its pipe threads ending with it. Real sockets, a real TLS server, real processes."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controlplane.rollouts.hooks import HookRunner
from modelplane.testing.processes import alive
from tests.deploy.conftest import tls_files  # noqa: F401
from tests.hook_support import HookLog, drip, tcp_server

pytestmark = pytest.mark.timeout(120)

#: Seconds past the timeout a cut-off call may take (a loaded machine); the calls these tests
#: cut off took at least twice the timeout before.
SLACK = 1.5


@pytest.fixture
def dripping_tls() -> Iterator[int]:
    """A server that starts a TLS record (a 16 KiB handshake) and sends it a byte at a time."""
    with tcp_server(lambda conn: drip(conn, b"\x16\x03\x03\x40\x00")) as port:
        yield port


@pytest.fixture
def dripping_proxy() -> Iterator[int]:
    """An HTTP proxy that answers CONNECT with a header line that never ends."""
    with tcp_server(lambda conn: drip(conn, b"HTTP/1.1 200 OK\r\nX-Pad: ")) as port:
        yield port


def _post(timeout: float, url: str) -> float:
    """Seconds ``HookRunner._post`` took; fails past 30 s."""
    done: list[float] = []

    def call() -> None:
        start = time.monotonic()
        HookRunner({}, timeout)._post("fraud", url, b"{}")
        done.append(time.monotonic() - start)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(30)
    assert done, f"the webhook call was still running after 30s (timeout {timeout}s)"
    return done[0]


def test_an_https_webhook_slow_to_resolve_then_dripping_its_handshake_stops_at_the_timeout(
    dripping_tls: int, monkeypatch: pytest.MonkeyPatch, hook_log: HookLog
) -> None:
    """Before, the name lookup and the connect went unbounded by the deadline and the handshake
    had the whole timeout again: up to twice it in all."""
    timeout = 3.0
    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(timeout * 0.9)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    took = _post(timeout, f"https://127.0.0.1:{dripping_tls}/hook")
    assert timeout * 0.9 <= took < timeout + SLACK, took
    [failed] = hook_log.events
    assert failed["event"] == "retraining webhook failed"
    assert failed["error"] == "no answer within 3s"


def test_an_https_webhook_whose_proxy_drips_its_tunnel_stops_at_the_timeout(
    dripping_proxy: int, monkeypatch: pytest.MonkeyPatch, hook_log: HookLog
) -> None:
    """The proxy's CONNECT answer comes before TLS: its socket is cut at the deadline too
    (before, nothing did, and the call lasted as long as the proxy dripped)."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{dripping_proxy}")
    took = _post(1.0, "https://hooks.example/retrain")
    assert took < 1.0 + SLACK, took
    [failed] = hook_log.events
    assert failed["event"] == "retraining webhook failed"
    assert failed["error"] == "no answer within 1s"


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def https_receiver(tls_files: tuple[Path, Path]) -> Iterator[int]:  # noqa: F811
    """An HTTPS server (certificate for localhost) answering each POST with 204."""
    cert, key = tls_files
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_webhook_is_delivered_to_a_trusted_certificate_only(
    https_receiver: int,
    tls_files: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    hook_log: HookLog,
) -> None:
    """The handshake done apart still checks the certificate and the host name."""
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    _Receiver.bodies.clear()
    _post(10.0, f"https://localhost:{https_receiver}/hook")
    [failed] = hook_log.events
    assert failed["event"] == "retraining webhook failed"
    assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]
    assert _Receiver.bodies == []
    hook_log.events.clear()

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    _post(10.0, f"https://localhost:{https_receiver}/hook")
    assert [(e["event"], e.get("status")) for e in hook_log.events] == [
        ("retraining webhook called", 204)
    ]
    assert _Receiver.bodies == [b"{}"]


def _hook_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The command pipe threads started since ``before`` and still running, after up to 5 s."""
    deadline = time.monotonic() + 5
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t not in before and t.name in ("hook-in", "hook-err") and t.is_alive()
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _pid_from(path: Path) -> int:
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text())


COMMANDS = {
    # bash's job control puts the background job in a process group of its own
    "job-control": [
        "bash",
        "-c",
        "set -m; sleep 600 & echo $! > {pid}.new; mv {pid}.new {pid}; wait",
    ],
    "setpgid": [
        sys.executable,
        "-c",
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '600'], process_group=0)\n"
        "open(sys.argv[1] + '.new', 'w').write(str(child.pid))\n"
        "os.replace(sys.argv[1] + '.new', sys.argv[1])\n"
        "time.sleep(600)\n",
        "{pid}",
    ],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_timed_out_command_is_killed_with_every_process_of_its_session(
    name: str, tmp_path: Path, hook_log: HookLog
) -> None:
    pid_file = tmp_path / "child.pid"
    argv = [a.replace("{pid}", str(pid_file)) for a in COMMANDS[name]]
    before = set(threading.enumerate())
    child = 0
    try:
        HookRunner({}, 1.0)._run("fraud", argv, b"{}")
        child = _pid_from(pid_file)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)  # it held stderr in a process group of its own
        assert [(e["event"], e["error"]) for e in hook_log.events] == [
            ("retraining command failed", "still running after 1s; killed")
        ]
        assert _hook_threads(before) == []
    finally:
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_process_that_left_the_session_does_not_keep_the_pipe_threads(
    tmp_path: Path, hook_log: HookLog
) -> None:
    """A process that made a session of its own (``setsid``) is no longer the command's, and
    is not killed; its copies of the command's stdin and stderr no longer hold the threads
    that feed and read them."""
    pid_file = tmp_path / "escaped.pid"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "open(sys.argv[1] + '.new', 'w').write(str(child.pid))\n"
        "os.replace(sys.argv[1] + '.new', sys.argv[1])\n"
        "time.sleep(600)\n"
    )
    before = set(threading.enumerate())
    escaped = 0
    try:
        # An event larger than a pipe's buffer that nobody reads: its feeder waits.
        HookRunner({}, 1.0)._run(
            "fraud", [sys.executable, "-c", script, str(pid_file)], b" " * 1_000_000
        )
        escaped = _pid_from(pid_file)
        assert _hook_threads(before) == []
        assert [e["event"] for e in hook_log.events] == ["retraining command failed"]
    finally:
        if escaped and alive(escaped):
            os.kill(escaped, signal.SIGKILL)
