"""The webhook's memory under bodies that are costly to parse or sent slowly: ``modelplane
injector serve`` as a process, with the settings of the base ConfigMap, stays within the
memory limit of its Deployment whatever is posted to it, however slowly."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, find, injector_process, load_yaml
from tests.deploy.pods import body, model_pod, review
from tests.deploy.test_webhook_https import _post

_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _container() -> dict[str, Any]:
    deployment = find(load_yaml(DEPLOY / "base/injector/deployment.yaml"), "Deployment",
                      "modelplane-injector")  # fmt: skip
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _memory_limit() -> int:
    limit = _container()["resources"]["limits"]["memory"]
    return int(limit[:-2]) * _UNITS[limit[-2:]]


def _pod_env() -> dict[str, str]:
    """The process's environment in the pod: the ConfigMap's settings and the container's
    env."""
    configmap = find(load_yaml(DEPLOY / "base/injector/configmap.yaml"), "ConfigMap",
                     "modelplane-injector")  # fmt: skip
    env = dict(configmap["data"])
    return env | {item["name"]: item["value"] for item in _container().get("env", [])}


def _status(pid: int, field: str) -> int:
    """A memory field of ``/proc/PID/status`` (VmRSS, VmHWM: the peak) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    return _status(pid, "VmHWM")


def _tiny_objects(size: int) -> bytes:
    """An AdmissionReview of ``size`` bytes whose request holds ``[{},{},...]``: the costliest
    JSON to parse per byte."""
    head = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
    head += b'"request":{"uid":"u","x":['
    count = (size - len(head) - 3) // 3
    return head + b"{}," * (count - 1) + b"{}]}}"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_many_bodies_of_tiny_objects_at_once_stay_within_the_memory_limit(
    tls_files: tuple[Path, Path],
) -> None:
    from controlplane.injector import InjectorSettings

    cert, key = tls_files
    with injector_process(cert, key, _pod_env()) as (proc, port):
        limit = InjectorSettings.model_fields["max_body_bytes"].default
        payload = _tiny_objects(limit)
        assert len(payload) <= limit
        answers: list[tuple[int, dict[str, Any]]] = []

        def post() -> None:
            answers.append(_post(port, cert, payload))

        # Two rounds: memory freed after the first must be reused by the second.
        for _ in range(2):
            threads = [threading.Thread(target=post) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert len(answers) == 32
        for status, answer in answers:
            assert status == 200 or (status == 503 and answer["reason"] == "OVERLOADED")
        assert any(status == 200 for status, _ in answers)
        peak = _peak_rss(proc.pid)
        assert peak < _memory_limit() * 0.9, f"peak {peak / 2**20:.0f} MiB"
        # Still answering ordinary reviews.
        status, answer = _post(port, cert, body(review(model_pod())))
        assert status == 200 and answer["response"]["allowed"] is True


def _slow_body(port: int, cert: Path, length: int) -> ssl.SSLSocket | None:
    """A connection that sends ``POST /inject`` declaring ``length`` bytes, all of them but
    the last, and then waits; None when the webhook refused it meanwhile."""
    context = ssl.create_default_context(cafile=str(cert))
    conn = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="127.0.0.1"
    )
    head = "POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    try:
        conn.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode() + b" " * (length - 1))
    except (OSError, ssl.SSLError):
        conn.close()
        return None
    return conn


def _still_open(conn: ssl.SSLSocket) -> bool:
    """Whether the webhook has neither answered nor closed the connection."""
    conn.setblocking(False)
    try:
        return not conn.recv(1)
    except ssl.SSLWantReadError:
        return True
    except (OSError, ssl.SSLError):
        return False
    finally:
        conn.setblocking(True)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_many_slow_bodies_cost_no_more_than_the_budgets_and_reviews_are_still_answered(
    tls_files: tuple[Path, Path],
) -> None:
    from controlplane.injector import InjectorSettings
    from controlplane.injector.settings import CONNECTION_MEMORY

    cert, key = tls_files
    # Bodies held for a minute: the attack lasts the whole test.
    env = _pod_env() | {"MODELPLANE_INJECTOR_READ_TIMEOUT_SECONDS": "60"}
    settings = InjectorSettings(tls_cert=cert, tls_key=key, **_settings_in(env))
    with injector_process(cert, key, env) as (proc, port):
        idle = _status(proc.pid, "VmRSS")
        length = settings.max_body_bytes
        held: list[ssl.SSLSocket | None] = []

        def attack() -> None:
            held.append(_slow_body(port, cert, length))

        # Far more connections than max_connections, each declaring the largest body: the
        # webhook reads a body only when it has room for all of it.
        attackers = [threading.Thread(target=attack) for _ in range(150)]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(120)
        try:
            peak = _peak_rss(proc.pid)
            bound = settings.max_receiving_bytes + settings.max_connections * CONNECTION_MEMORY
            assert peak - idle <= bound, f"{(peak - idle) / 2**20:.0f} MiB over idle"
            assert peak < _memory_limit() * 0.9, f"peak {peak / 2**20:.0f} MiB"
            # An ordinary review is answered while the bodies that had room are still held.
            status, answer = _post(port, cert, body(review(model_pod())))
            assert status == 200 and answer["response"]["allowed"] is True
            # The others were answered 503 and closed, once their bodies had been drained
            # for up to a second; the bodies that had room are still held.
            room = settings.max_receiving_bytes // length
            deadline = time.monotonic() + 15
            while True:
                holding = [conn for conn in held if conn is not None and _still_open(conn)]
                if len(holding) <= room or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(holding) == room
        finally:
            for conn in held:
                if conn is not None:
                    conn.close()


def _settings_in(env: dict[str, str]) -> dict[str, str]:
    """The injector settings among ``env``, as keyword arguments."""
    prefix = "MODELPLANE_INJECTOR_"
    return {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
