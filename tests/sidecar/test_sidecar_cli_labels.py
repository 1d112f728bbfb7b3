"""``modelplane sidecar serve`` refuses an empty ``--model-version`` (flag or
``MODELPLANE_SIDECAR_MODEL_VERSION``) with exit 2 and one ``error:`` line naming the flag; an
empty ``--model-name`` keeps its documented meaning, the model file's stem. The CLI runs in a
subprocess, on a real ONNX model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sidecar_helpers import PYTHON, ROOT, spawn_sidecar, stub

from modelplane.oip import grpc_service_pb2 as pb


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--model-version", ""], {}),
        (["--model-version", "  "], {}),
        ([], {"MODELPLANE_SIDECAR_MODEL_VERSION": ""}),
    ],
    ids=["flag", "blank flag", "env"],
)
def test_an_empty_model_version_is_refused(
    model_dir: Path, flags: list[str], env: dict[str, str]
) -> None:
    done = _serve(["--model", str(model_dir / "two.onnx"), *flags], env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "--model-version" in lines[0]
    assert done.stdout == ""


def test_an_empty_model_name_serves_the_file_stem(model_dir: Path) -> None:
    proc, ready = spawn_sidecar(
        ["--model", str(model_dir / "two.onnx"), "--listen", "127.0.0.1:0", "--model-name", ""]
    )
    try:
        port = int(ready["port"])
        meta = stub(port).ModelMetadata(pb.ModelMetadataRequest(name="two"), timeout=10)
        assert meta.name == "two" and list(meta.versions) == ["1"]
    finally:
        proc.terminate()
        proc.wait(20)
