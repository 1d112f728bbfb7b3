"""What bounds the webhook's connections over real HTTPS: one read deadline per request
however the bytes trickle in, a cap on the request head, room for large bodies before they
are read, and a cap on the connections served at once."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import injector_process, injector_settings
from tests.deploy.pods import body, model_pod, review
from tests.deploy.test_webhook_https import _post


def _connect(port: int, cert: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    plain = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(plain, server_hostname="127.0.0.1")


def _head(length: int, extra: str = "") -> bytes:
    return (
        "POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {length}\r\n\r\n"
    ).encode()


def _closed(conn: ssl.SSLSocket) -> bool:
    """Whether the webhook closed the connection (without answering)."""
    conn.setblocking(False)
    try:
        return conn.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except (OSError, ssl.SSLError):
        return True
    finally:
        conn.setblocking(True)


@pytest.fixture
def start_injector(tls_files: tuple[Path, Path]) -> Iterator[Any]:
    """Starts a webhook in this process with the given settings; stops them all afterwards."""
    from controlplane.injector import start

    cert, key = tls_files
    handles = []

    def run(**values: Any) -> Any:
        settings = injector_settings(
            listen="127.0.0.1:0", tls_cert=cert, tls_key=key, shutdown_delay_seconds=0, **values
        )
        handles.append(start(settings))
        return handles[-1]

    yield run
    for handle in handles:
        handle.stop()


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_dripping_in_is_cut_at_the_read_deadline(
    tls_files: tuple[Path, Path], part: str
) -> None:
    cert, key = tls_files
    env = {"MODELPLANE_INJECTOR_READ_TIMEOUT_SECONDS": "2"}
    with injector_process(cert, key, env) as (_, port):
        conn = _connect(port, cert)
        payload = body(review(model_pod()))
        request = _head(len(payload)) + payload
        sent = request.index(b"\r\n") + 2 if part == "headers" else len(request) // 2
        conn.sendall(request[:sent])
        started = time.monotonic()
        # A byte every quarter of a second: far more often than any socket timeout.
        while not _closed(conn) and time.monotonic() - started < 6 and sent < len(request):
            try:
                conn.sendall(request[sent : sent + 1])
            except (OSError, ssl.SSLError):
                break
            sent += 1
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        conn.close()
        assert sent < len(request)
        assert 1.5 <= elapsed < 4, f"closed after {elapsed:.1f} s"


def test_a_head_over_64_kib_is_refused(start_injector: Any, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    handle = start_injector()
    payload = body(review(model_pod()))
    # Each header is under http.server's own limit of 64 KiB a line.
    padding = "".join(f"X-Pad-{i}: {'a' * 30_000}\r\n" for i in range(3))
    conn = _connect(handle.port, cert)
    try:
        conn.sendall(_head(len(payload), padding) + payload)
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        assert response.status == 431
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()
    status, answer = _post(handle.port, cert, payload)
    assert status == 200 and answer["response"]["allowed"] is True


def test_a_large_body_without_room_is_refused_before_it_is_read(
    start_injector: Any, tls_files: tuple[Path, Path]
) -> None:
    from controlplane.injector.settings import SMALL_BODY_BYTES

    cert, _ = tls_files
    size = 1024 * 1024
    handle = start_injector(max_body_bytes=size, max_parsing_bytes=size, max_receiving_bytes=size)
    large = body(review(model_pod(annotations={"note": "x" * (SMALL_BODY_BYTES * 2)})))
    assert SMALL_BODY_BYTES < len(large) <= size // 2
    # A body of the largest size, half sent: it holds all the room while it comes.
    holder = _connect(handle.port, cert)
    holder.sendall(_head(size) + b" " * (size // 2))
    try:
        time.sleep(0.3)
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", handle.port, context=context, timeout=10)
        conn.request("POST", "/inject", body=large, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        assert json.loads(response.read())["reason"] == "OVERLOADED"
        conn.close()
        # Ordinary pods need no room.
        status, answer = _post(handle.port, cert, body(review(model_pod())))
        assert status == 200 and answer["response"]["allowed"] is True
    finally:
        holder.close()
    # The room is back once the holder is gone.
    deadline = time.monotonic() + 5
    while (status := _post(handle.port, cert, large)[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_connections_past_the_cap_wait_until_a_request_in_progress_ends(
    start_injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    handle = start_injector(max_connections=2)
    # Requests in progress keep their slots (connections idle between requests do not:
    # tests/deploy/test_webhook_cap.py).
    payload = body(review(model_pod()))
    busy = [_connect(handle.port, cert) for _ in range(2)]
    for conn in busy:
        conn.sendall(_head(len(payload)) + payload[:10])
    answers: list[tuple[int, dict[str, Any]]] = []
    waiting = threading.Thread(
        target=lambda: answers.append(_post(handle.port, cert, body(review(model_pod()))))
    )
    waiting.start()
    try:
        waiting.join(1.5)
        assert not answers  # not even its TLS handshake is answered
        busy.pop().close()
        waiting.join(10)
        assert answers and answers[0][0] == 200
    finally:
        for conn in busy:
            conn.close()
        waiting.join(10)
