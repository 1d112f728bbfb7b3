"""An address ``sidecar serve`` cannot listen on is named with its option: exit 2 with one
``error:`` line, promptly, in standalone and managed mode, with or without ``--workers``, for
the gRPC listener and the metrics endpoint (as ``controlplane serve`` does)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from sidecar_helpers import PYTHON, ROOT

from modelplane.testing import onnx_models


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.save(onnx_models.mlp(), tmp_path_factory.mktemp("m") / "mlp.onnx")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("mode", ["standalone", "managed"])
@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_an_address_in_use_is_named_with_its_option(
    model: Path, taken: str, mode: str, workers: str, option: str
) -> None:
    if mode == "standalone":
        source = ["--model", str(model)]
    else:  # a control plane that is not there: the listeners are opened before it is reached
        source = ["--control-plane", f"127.0.0.1:{_closed_port()}", "--deployment", "fraud"]
    argv = [
        PYTHON, "-m", "modelplane.cli", "sidecar", "serve", *source, "--device", "cpu",
        "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--workers", workers, option, taken,
    ]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    # A prompt exit: nothing opened before the failed bind (thread pools, workers) holds it.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean)
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith(f"error: {option} {taken}: "), result.stderr
    if option == "--listen":
        assert "cannot listen on it (the port is in use" in err[0]
    assert "Traceback" not in result.stderr
    assert "sidecar ready" not in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_another_reuseport_server_listens_on_is_refused(model: Path, workers: str) -> None:
    """A port held by a server that set SO_REUSEPORT (another ``--workers N`` sidecar left
    running) is refused too: joined, the two would split its connections between them."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        argv = [
            PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model),
            "--device", "cpu", "--listen", taken, "--workers", workers,
        ]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean
        )
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and "cannot listen on it (the port is in use" in err[0], result.stderr
    assert "sidecar ready" not in result.stdout


@pytest.mark.parametrize("mode", ["standalone", "managed"])
def test_start_on_an_address_in_use_raises_oserror_and_leaves_no_threads(
    model: Path, taken: str, mode: str
) -> None:
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    source: dict[str, object] = {"model": model}
    if mode == "managed":
        source = {"control_plane": f"127.0.0.1:{_closed_port()}", "deployment": "fraud"}
    before = set(threading.enumerate())
    with pytest.raises(OSError, match=f"cannot listen on {taken}"):
        start(SidecarSettings(listen=taken, device="cpu", **source))  # type: ignore[arg-type]
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
