"""An address ``controlplane serve`` cannot listen on is named with its option: exit 2 with
one line, with or without ``--workers``, for the gRPC listener and the metrics endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def taken() -> Iterator[str]:
    """An address another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_an_address_in_use_is_named_with_its_option(
    tmp_path: Path, taken: str, workers: str, option: str
) -> None:
    argv = ["--listen", "127.0.0.1:0", "--workers", workers, option, taken]
    result = subprocess.run(
        [
            str(BIN / "modelplane"),
            "controlplane",
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "artifacts"),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")},
    )
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith(f"error: {option} {taken}: "), result.stderr
    assert "Traceback" not in result.stderr
