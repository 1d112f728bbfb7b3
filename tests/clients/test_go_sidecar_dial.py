"""The Go client's DialSidecar against a real sidecar (`modelplane sidecar serve`): an Open
Inference Protocol answer over grpc-go's default 4 MiB receive limit arrives (an Identity
model's: bit for bit the input sent), and the sidecar's errors carry their reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from modelplane.testing.processes import free_port
from tests.clients.conftest import ROOT
from tests.clients.test_go_client import MODULE, _go, go_module  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def _identity(path: Path) -> Path:
    """An ONNX Identity of x FP32[-1,1024] into y."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1024])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """HOST:PORT of `modelplane sidecar serve --model big.onnx`, and the model's file."""
    model = _identity(tmp_path_factory.mktemp("sidecar") / "big.onnx")
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "modelplane.cli", "sidecar", "serve",
            "--model", str(model), "--listen", address, "--device", "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while True:
            line = proc.stdout.readline()
            assert line, f"the sidecar exited with {proc.wait(5)} before it was ready"
            if '"sidecar ready"' in line:
                assert json.loads(line)["port"] == int(address.rpartition(":")[2])
                break
            assert time.monotonic() < deadline, "the sidecar did not get ready in time"
        yield address, model
    finally:
        proc.kill()
        proc.wait()


def test_go_dial_sidecar_receives_answers_over_four_mib(
    go_module: tuple[Path, dict[str, str]],  # noqa: F811
    sidecar: tuple[str, Path],
) -> None:
    """clients/go/client's TestSidecarLive tests, which skip without a sidecar."""
    folder, env = go_module
    address, model = sidecar
    live_env = {
        **env,
        "MODELPLANE_TEST_SIDECAR": address,
        "MODELPLANE_TEST_SIDECAR_MODEL": model.stem,
    }
    test = _go(
        ["test", "-count=1", "-v", "-run", "^TestSidecarLive", "./client/"], (folder, live_env)
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "--- PASS: TestSidecarLiveAnswersOverFourMiBAreReceived" in test.stdout
    assert "--- PASS: TestSidecarLiveErrorsCarryTheirReason" in test.stdout
    assert "--- SKIP" not in test.stdout, test.stdout


def test_the_readme_sidecar_example_compiles(
    go_module: tuple[Path, dict[str, str]],  # noqa: F811
) -> None:
    """clients/go/README.md's DialSidecar snippet, as the body of a function given a ctx."""
    folder, env = go_module
    readme = (folder / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```go\n(.*?)```", readme, re.S) if "DialSidecar" in b]
    program = folder.parents[4] / "example.com" / "sidecarexample"  # GOPATH/src/example.com
    program.mkdir(parents=True)
    try:
        (program / "main.go").write_text(
            "package main\n\n"
            "import (\n"
            '\t"context"\n\t"encoding/binary"\n\t"fmt"\n\t"math"\n\n'
            '\t"google.golang.org/grpc/status"\n\n'
            f'\t"{MODULE}/client"\n\t"{MODULE}/oip"\n'
            ")\n\n"
            "func example(ctx context.Context) error {\n"
            f"{snippet}"
            "return nil\n}\n\n"
            "func main() { _ = example(context.Background()) }\n"
        )
        vet = subprocess.run(
            ["go", "vet", "."], cwd=program, env=env, capture_output=True, text=True, timeout=300
        )
        assert vet.returncode == 0, vet.stdout + vet.stderr
    finally:
        shutil.rmtree(program)
