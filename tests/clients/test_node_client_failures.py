"""The TypeScript client (clients/node) where the address is not a working control plane's: a
metrics port (HTTP/1.1), a sidecar's address, a control plane killed under a watch; and what
its example says of a gate with no policy bound. Each is reported as the `modelplane` CLI and
gRPC core report it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing import wait_serving
from modelplane.testing.processes import free_port
from tests.clients.conftest import Classifier, LiveControlPlane
from tests.clients.test_node_client import EXAMPLE, _run, node_built  # noqa: F401
from tests.clients.test_wrong_server import sidecar  # noqa: F401


@dataclass
class ControlPlaneProcess:
    """A control plane in a process of its own (to be killed), its gRPC and metrics addresses."""

    proc: subprocess.Popen[bytes]
    address: str
    metrics: str


@pytest.fixture
def controlplane_process(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """`modelplane controlplane serve` on SQLite with a metrics port, killed at the end."""
    address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "modelplane.cli", "controlplane", "serve",
            "--listen", address, "--db", f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root", str(tmp_path / "art"), "--metrics-listen", metrics,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(address, timeout=60, proc=proc)
        yield ControlPlaneProcess(proc, address, metrics)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _example(classifier: Classifier, *argv: str) -> list[str]:
    return ["node", str(EXAMPLE), "--model", "m", "--onnx", str(classifier.onnx), *argv]


@pytest.mark.usefixtures("node_built")
def test_example_exits_4_on_a_metrics_port_saying_it_speaks_no_http2(
    controlplane_process: ControlPlaneProcess, classifier: Classifier
) -> None:
    # The call failed, then close() left the session's protocol error with no listener: the
    # process died of it (exit 1, "gate failed" to a CI job), and the message spoke of TLS.
    metrics = controlplane_process.metrics
    result = _run(_example(classifier, "--server", metrics, "--timeout", "30s"), metrics)
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"error: UNAVAILABLE: the server at {metrics} does not speak HTTP/2"
    ), result.stderr
    assert f"is {metrics} an HTTP/1.1 port, such as a metrics port" in result.stderr
    assert "TLS" not in result.stderr
    assert "Unhandled 'error' event" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.usefixtures("node_built")
def test_example_names_a_sidecars_address_as_the_likely_mix_up(
    sidecar: str,  # noqa: F811
    classifier: Classifier,
) -> None:
    result = _run(_example(classifier, "--server", sidecar, "--timeout", "30s"), sidecar)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"error: UNIMPLEMENTED: {sidecar} answers, but does not serve this API ("
    ), result.stderr
    assert f"is {sidecar} a sidecar's address?" in result.stderr
    assert "--server or MODELPLANE_SERVER" in result.stderr


@pytest.mark.usefixtures("node_built")
def test_example_says_which_policy_decided_or_that_none_is_bound(
    live_controlplane: LiveControlPlane, classifier: Classifier
) -> None:
    model, target = f"ts-{uuid.uuid4().hex[:8]}", f"release-{uuid.uuid4().hex[:8]}"
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    unbound = _run([*argv, "--target", "production"], live_controlplane.address)
    assert unbound.returncode == 0, unbound.stdout + unbound.stderr
    assert "gate production: passed (no policy bound; evidence none)\n" in unbound.stdout

    with Client(live_controlplane.address, principal="ops-admin") as admin:
        policy = admin.create_policy(
            f"p-{uuid.uuid4().hex[:8]}", target=target, rules=["metrics.roc_auc >= 0.9"]
        )
    bound = _run([*argv, "--target", target], live_controlplane.address)
    assert bound.returncode == 1, bound.stdout + bound.stderr
    assert f"gate {target}: failed ({policy.name} r1; evidence none)\n" in bound.stdout


@pytest.mark.usefixtures("node_built")
def test_node_watch_cut_by_a_killed_control_plane_is_unavailable(
    controlplane_process: ControlPlaneProcess, classifier: Classifier
) -> None:
    result = _run(
        ["node", "--test", "dist/test/killed-server.live.js"],
        controlplane_process.address,
        MODELPLANE_DOOMED_SERVER=controlplane_process.address,
        MODELPLANE_DOOMED_PID=str(controlplane_process.proc.pid),
        MODELPLANE_TEST_ONNX=str(classifier.onnx),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# pass 1" in result.stdout and "# SKIP" not in result.stdout, result.stdout
    assert controlplane_process.proc.wait(timeout=30) == -9  # the test did kill it
