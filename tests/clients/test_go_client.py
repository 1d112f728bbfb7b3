"""The Go client (clients/go): it builds and vets offline against Debian's Go packages, and
its register example works against a live control plane.

Debian's golang-google-grpc-dev and golang-google-protobuf-dev install their sources under
/usr/share/gocode; without a module proxy the build runs in GOPATH mode over them, with the
module linked into a temporary GOPATH at its import path. `make go-tools` installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from tests.clients.conftest import ROOT, Classifier, LiveControlPlane

GO_ROOT = ROOT / "clients" / "go"
MODULE = "github.com/modelplane/modelplane/clients/go"
DEBIAN_GOPATH = Path("/usr/share/gocode")


@pytest.fixture(scope="module")
def go_module(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The module's folder inside a temporary GOPATH, and the environment to build it."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (`make go-tools` installs Debian's golang-go as root)")
    grpc = DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc"
    assert grpc.is_dir(), f"{grpc} is missing: run `make go-tools`"
    gopath = tmp_path_factory.mktemp("gopath")
    link = gopath / "src" / MODULE
    link.parent.mkdir(parents=True)
    link.symlink_to(GO_ROOT, target_is_directory=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
        "GOFLAGS": "",
        "GOPROXY": "off",
    }
    return link, env


def _go(args: list[str], module: tuple[Path, dict[str, str]]) -> subprocess.CompletedProcess[str]:
    folder, env = module
    return subprocess.run(
        ["go", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def test_go_client_builds_vets_and_is_gofmt_clean(go_module: tuple[Path, dict[str, str]]) -> None:
    build = _go(["build", "./..."], go_module)
    assert build.returncode == 0, build.stderr
    vet = _go(["vet", "./..."], go_module)
    assert vet.returncode == 0, vet.stderr
    fmt = subprocess.run(["gofmt", "-l", "."], cwd=GO_ROOT, capture_output=True, text=True)
    assert fmt.stdout == "", f"not gofmt-formatted: {fmt.stdout}"


def test_go_client_unit_tests_pass(go_module: tuple[Path, dict[str, str]]) -> None:
    """clients/go/client's own tests, against in-process gRPC servers."""
    test = _go(["test", "-count=1", "./..."], go_module)
    assert test.returncode == 0, test.stdout + test.stderr


def test_go_client_tests_against_a_live_control_plane(
    go_module: tuple[Path, dict[str, str]],
    live_controlplane: LiveControlPlane,
    classifier: Classifier,
) -> None:
    """clients/go/client's TestLive tests, which skip without a server: a CreateModel or
    EvaluateGate retried with its request id replays the first answer, and answers over
    grpc-go's default 4 MiB receive limit arrive."""
    folder, env = go_module
    live_env = {
        **env,
        "MODELPLANE_TEST_SERVER": live_controlplane.address,
        "MODELPLANE_TEST_ONNX": str(classifier.onnx),
    }
    test = _go(["test", "-count=1", "-v", "-run", "^TestLive", "./client/"], (folder, live_env))
    assert test.returncode == 0, test.stdout + test.stderr
    assert "--- PASS: TestLive" in test.stdout
    assert "--- SKIP" not in test.stdout, test.stdout


def test_go_example_registers_and_gates_against_a_live_control_plane(
    go_module: tuple[Path, dict[str, str]],
    live_controlplane: LiveControlPlane,
    classifier: Classifier,
    tmp_path: Path,
) -> None:
    binary = tmp_path / "register"
    build = _go(["build", "-o", str(binary), "./examples/register"], go_module)
    assert build.returncode == 0, build.stderr
    model, target = f"go-{uuid.uuid4().hex[:8]}", f"release-{uuid.uuid4().hex[:8]}"
    server = ["-server", live_controlplane.address]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *server, *args], capture_output=True, text=True, timeout=60
        )

    passed = run("-model", model, "-onnx", str(classifier.onnx), "-as", "go-ci")
    assert passed.returncode == 0, passed.stderr
    assert f"created models/{model}" in passed.stdout
    assert f"registered models/{model}/versions/1" in passed.stdout
    assert "input input FP32[-1,4]" in passed.stdout
    assert "gate production: passed" in passed.stdout
    with Client(live_controlplane.address) as client:
        v1 = client.get_version(model, 1)
    assert v1.created_by == "go-ci"
    assert dict(v1.labels) == {"source": "go-example"}

    with Client(live_controlplane.address, principal="ops-admin") as admin:
        admin.create_policy(
            f"p-{uuid.uuid4().hex[:8]}", target=target, rules=["metrics.roc_auc >= 0.9"]
        )
    failed = run("-model", model, "-onnx", str(classifier.onnx), "-target", target)
    assert failed.returncode == 1, failed.stderr
    assert f"registered models/{model}/versions/2" in failed.stdout
    assert f"gate {target}: failed" in failed.stdout

    bad = run("-model", "Bad_Id", "-onnx", str(classifier.onnx))
    assert bad.returncode == 3
    assert "INVALID_ARGUMENT INVALID_NAME" in bad.stderr

    missing = run("-model", model)
    assert missing.returncode == 2
    assert "usage" in missing.stderr

    fresh = f"go-{uuid.uuid4().hex[:8]}"
    unreadable = run("-model", fresh, "-onnx", str(tmp_path / "nope.onnx"))
    assert unreadable.returncode == 2, unreadable.stdout + unreadable.stderr
    assert unreadable.stderr.startswith("error: open "), unreadable.stderr
    with Client(live_controlplane.address) as client:  # read before any call: nothing created
        assert all(m.name != f"models/{fresh}" for m in client.list_models())


@pytest.fixture(scope="module")
def register_binary(
    go_module: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The register example, built."""
    binary = tmp_path_factory.mktemp("register") / "register"
    build = _go(["build", "-o", str(binary), "./examples/register"], go_module)
    assert build.returncode == 0, build.stderr
    return binary


def test_go_example_exits_4_when_the_server_does_not_answer_in_time(
    register_binary: Path, silent_server: str
) -> None:
    # DEADLINE_EXCEEDED is "could not be reached or did not answer in time", as UNAVAILABLE
    # is: 4, as the CLI and the Node example exit, not 3 (a server's error answer).
    argv = ["-server", silent_server, "-timeout", "1s", "-model", "m", "-onnx", "go.mod"]
    result = subprocess.run(
        [str(register_binary), *argv],
        cwd=GO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "DEADLINE_EXCEEDED" in result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-server", "not an address"], "error: -server: address not an address: missing port"),
        (["-server", "127.0.0.1:99999"], 'error: -server: address 127.0.0.1:99999: port "99999"'),
        (["-timeout", "-5s"], "error: -timeout: -5s is negative"),
    ],
)
def test_go_example_exits_2_on_a_malformed_server_or_timeout_before_dialing(
    register_binary: Path, argv: list[str], says: str
) -> None:
    # A mistyped address is the caller's mistake (2), not an unreachable server (4).
    result = subprocess.run(
        [str(register_binary), *argv, "-model", "m", "-onnx", str(GO_ROOT / "go.mod")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "usage: register" in result.stderr


@pytest.fixture
def unix_controlplane() -> Iterator[str]:
    """The path of a control plane's unix socket (a short one: sun_path holds 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="mp-go-", dir="/tmp"))
    settings = ControlPlaneSettings(  # type: ignore[call-arg]  # the rest from defaults
        listen=f"unix:{folder / 'cp.sock'}",
        auth="none",  # not a loopback HOST:PORT: access control is refused without it
        db_url=f"sqlite:///{folder / 'cp.db'}",
        artifact_root=str(folder / "artifacts"),
        grace_seconds=1.0,
    )
    handle = start(settings)
    yield str(folder / "cp.sock")
    handle.stop(0)
    shutil.rmtree(folder, ignore_errors=True)


def test_go_example_takes_grpc_targets_as_the_cli_does(
    register_binary: Path,
    unix_controlplane: str,
    live_controlplane: LiveControlPlane,
    classifier: Classifier,
) -> None:
    # unix: and dns: targets go to grpc.Dial as the `modelplane` CLI's --server passes them,
    # not refused as "not HOST:PORT" (exit 2).
    port = live_controlplane.address.rpartition(":")[2]
    models = {
        f"unix://{unix_controlplane}": f"go-{uuid.uuid4().hex[:8]}",
        f"unix:{unix_controlplane}": f"go-{uuid.uuid4().hex[:8]}",
        f"dns:///127.0.0.1:{port}": f"go-{uuid.uuid4().hex[:8]}",
        f"passthrough:///127.0.0.1:{port}": f"go-{uuid.uuid4().hex[:8]}",
    }
    for server, model in models.items():
        argv = ["-server", server, "-model", model, "-onnx", str(classifier.onnx)]
        result = subprocess.run(
            [str(register_binary), *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{server}: {result.stdout}{result.stderr}"
        assert f"registered models/{model}/versions/1" in result.stdout
        assert "gate production: passed" in result.stdout
    # Each model is on the server its target names.
    for address in (f"unix:{unix_controlplane}", live_controlplane.address):
        with Client(address) as client:
            names = {m.name for m in client.list_models()}
        on_unix = address.startswith("unix:")
        for server, model in models.items():
            assert (f"models/{model}" in names) == (server.startswith("unix:") == on_unix)


def test_readme_build_commands_work_without_a_module_proxy(tmp_path: Path) -> None:
    """Each `sh` block of clients/go/README.md that builds runs as written with no module proxy
    (its `./register` runs left out), unless it starts with `go mod tidy`, which needs one: a
    plain `go build` in module mode stops at "missing go.sum entry"."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (`make go-tools` installs Debian's golang-go as root)")
    readme = (GO_ROOT / "README.md").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("GO111MODULE", "GOPATH")}
    env.update(GOPROXY="off", GOFLAGS="")
    ran = 0
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        if "go build" not in block or block.lstrip().startswith("go mod tidy"):
            continue
        script = "\n".join(
            line.replace("/tmp/gopath", str(tmp_path / "gopath")).replace(
                "-o register", f"-o {tmp_path / 'register'}"
            )
            for line in block.splitlines()
            if not line.startswith("./")
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=GO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{block}\n{result.stdout}{result.stderr}"
        ran += 1
    assert ran >= 1
    assert (tmp_path / "register").is_file()  # the example, built offline as the README says
