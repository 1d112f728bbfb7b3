"""The webhook at its connection cap, over real sockets: the kubelet's probes have a port of
their own that connections held open cannot starve, idle connections are closed to admit new
ones, and a connection that never starts TLS holds its slot only for the handshake deadline."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import injector_process, injector_settings
from tests.deploy.pods import body, model_pod, review
from tests.deploy.test_webhook_https import _post
from tests.deploy.test_webhook_limits import _closed, _connect, _head


def _probe(port: int, path: str, timeout: float = 1.0) -> int:
    """The status of a plain-HTTP ``GET path``, within the kubelet's default probe timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _squatters(stack: ExitStack, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections to ``port`` that send nothing, closed with ``stack``."""
    socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
             for _ in range(count)]  # fmt: skip
    time.sleep(0.3)  # accepted by now
    return socks


@pytest.fixture
def start_injector(tls_files: tuple[Path, Path]) -> Iterator[Any]:
    """Starts a webhook in this process with the given settings; stops them all afterwards."""
    from controlplane.injector import start

    cert, key = tls_files
    handles = []

    def run(**values: Any) -> Any:
        values = {"listen": "127.0.0.1:0", "shutdown_delay_seconds": 0, **values}
        handles.append(start(injector_settings(tls_cert=cert, tls_key=key, **values)))
        return handles[-1]

    yield run
    for handle in handles:
        handle.stop()


def test_the_probes_answer_on_their_own_port_while_raw_connections_hold_every_slot(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    health = _free_port()
    env = {
        "MODELPLANE_INJECTOR_MAX_CONNECTIONS": "4",
        "MODELPLANE_INJECTOR_HANDSHAKE_TIMEOUT_SECONDS": "30",
    }
    with injector_process(cert, key, env, health) as (_, port), ExitStack() as stack:
        assert _probe(health, "/livez") == 200
        _squatters(stack, port, 4)
        # The webhook's own port answers nothing now, not even a TLS handshake...
        with pytest.raises((TimeoutError, ssl.SSLError, OSError)):
            context = ssl.create_default_context(cafile=str(cert))
            plain = socket.create_connection(("127.0.0.1", port), timeout=1)
            context.wrap_socket(plain, server_hostname="127.0.0.1").close()
        # ...but the probes are answered at once.
        for path in ("/livez", "/healthz"):
            started = time.monotonic()
            assert _probe(health, path) == 200
            assert time.monotonic() - started < 0.5


def test_connections_held_open_on_the_probe_port_cannot_starve_it(start_injector: Any) -> None:
    from controlplane.injector.health import MAX_CONNECTIONS

    handle = start_injector()
    with ExitStack() as stack:
        silent = _squatters(stack, handle.health_port, MAX_CONNECTIONS)
        dripping = _squatters(stack, handle.health_port, MAX_CONNECTIONS)
        for sock in dripping:
            sock.sendall(b"GET /livez HTTP/1.1\r\n")
        for _ in range(3):
            started = time.monotonic()
            assert _probe(handle.health_port, "/livez") == 200
            assert time.monotonic() - started < 0.5
        # The oldest were closed to admit the newer ones.
        for sock in silent:
            sock.settimeout(1)
            assert sock.recv(1) == b""
    # Anything but a probe is refused.
    assert _probe(handle.health_port, "/inject") == 404
    conn = http.client.HTTPConnection("127.0.0.1", handle.health_port, timeout=1)
    conn.request("POST", "/livez", body=b"{}")
    assert conn.getresponse().status == 405
    conn.close()


def test_a_review_waits_only_for_a_squatters_handshake_deadline(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    env = {
        "MODELPLANE_INJECTOR_MAX_CONNECTIONS": "4",
        "MODELPLANE_INJECTOR_HANDSHAKE_TIMEOUT_SECONDS": "1",
    }
    with injector_process(cert, key, env) as (_, port), ExitStack() as stack:
        squatters = _squatters(stack, port, 4)
        started = time.monotonic()
        status, answer = _post(port, cert, body(review(model_pod())))
        elapsed = time.monotonic() - started
        assert status == 200 and answer["response"]["allowed"] is True
        # It waited in the backlog until the squatters' handshake deadline, not longer.
        assert 0.3 <= elapsed < 4, f"answered after {elapsed:.1f} s"
        for sock in squatters:
            sock.settimeout(1)
            assert sock.recv(1) == b""


@pytest.mark.parametrize("idle", ["after a review", "after its handshake"])
def test_an_idle_connection_is_closed_to_admit_a_new_one_and_a_request_in_progress_is_not(
    start_injector: Any, tls_files: tuple[Path, Path], idle: str
) -> None:
    cert, _ = tls_files
    handle = start_injector(max_connections=2)
    payload = body(review(model_pod()))
    # One connection in the middle of a request...
    sending = _connect(handle.port, cert)
    sending.sendall(_head(len(payload)) + payload[:10])
    # ...and one waiting for its next request, or its first.
    context = ssl.create_default_context(cafile=str(cert))
    waiting = http.client.HTTPSConnection("127.0.0.1", handle.port, context=context, timeout=10)
    if idle == "after a review":
        waiting.request(
            "POST", "/inject", body=payload, headers={"Content-Type": "application/json"}
        )
        response = waiting.getresponse()
        assert response.status == 200 and not response.will_close
        response.read()
    else:
        waiting.connect()
    time.sleep(0.2)
    try:
        started = time.monotonic()
        status, answer = _post(handle.port, cert, payload)
        assert status == 200 and answer["response"]["allowed"] is True
        assert time.monotonic() - started < 1.5
        assert waiting.sock is not None and _closed(waiting.sock)
        # The request in progress is still read, and answered.
        sending.sendall(payload[10:])
        response = http.client.HTTPResponse(sending)  # type: ignore[arg-type]
        response.begin()
        assert response.status == 200
    finally:
        sending.close()
        waiting.close()


def test_the_probe_port_answers_not_ready_while_stopping_and_closes_last(
    tls_files: tuple[Path, Path],
) -> None:
    from controlplane.injector import start

    cert, key = tls_files
    settings = injector_settings(
        listen="127.0.0.1:0", tls_cert=cert, tls_key=key, shutdown_delay_seconds=1.5
    )
    handle = start(settings)
    port = handle.health_port
    assert _probe(port, "/healthz") == 200
    stopping = threading.Thread(target=handle.stop)
    stopping.start()
    try:
        time.sleep(0.3)
        assert _probe(port, "/healthz") == 503
        assert _probe(port, "/livez") == 200
    finally:
        stopping.join(30)
    with pytest.raises(ConnectionRefusedError):
        _probe(port, "/livez")
