"""``sidecar serve --workers N`` with a ``--log-dir`` it cannot write: one ``error: cannot
serve: ...`` line and exit 1, as without workers, and no traceback. The supervisor checks the
directory before it starts any worker; a worker that meets the same error prints the same line.
Real subprocesses of the CLI and of a worker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sidecar_helpers import PYTHON, ROOT

from modelplane.testing import onnx_models
from sidecar.predlog import PredictionLogSettings
from sidecar.settings import SidecarSettings
from sidecar.workers import _worker_env


def _not_a_directory(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "predictions"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unwritable_log_dir_gives_one_error_line(tmp_path: Path, workers: str) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    log_dir = _not_a_directory(tmp_path)
    done = subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model),
         "--listen", "127.0.0.1:0", "--device", "cpu", "--workers", workers,
         "--log-dir", str(log_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot serve: [Errno 20] Not a directory: '{log_dir}'"]


def test_a_worker_that_cannot_open_its_log_prints_one_error_line(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.mlp(), tmp_path / "mlp.onnx")
    log_dir = _not_a_directory(tmp_path)
    env = _worker_env(
        SidecarSettings(model=model, listen="127.0.0.1:0", device="cpu"),
        0,
        PredictionLogSettings(dir=log_dir),
    )
    done = subprocess.run(
        [PYTHON, "-m", "sidecar.workers"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot serve: [Errno 20] Not a directory: '{log_dir}'"]
