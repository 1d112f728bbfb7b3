"""The webhook's memory under bodies that are costly to parse: ``modelplane injector serve``
as a process, with the settings of the base ConfigMap, stays within the memory limit of its
Deployment whatever is posted to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, find, load_yaml
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


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


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
    configmap = find(load_yaml(DEPLOY / "base/injector/configmap.yaml"), "ConfigMap",
                     "modelplane-injector")  # fmt: skip
    # The process's environment in the pod: the ConfigMap's settings and the container's env.
    env = {**os.environ, **configmap["data"]}
    env |= {item["name"]: item["value"] for item in _container().get("env", [])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "injector", "serve", "--listen", "127.0.0.1:0",
         "--tls-cert", str(cert), "--tls-key", str(key), "--shutdown-delay", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
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
    finally:
        proc.kill()
        proc.wait()
