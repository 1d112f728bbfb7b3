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
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from tests.clients.conftest import ROOT, Classifier, LiveControlPlane
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_auth_tls import _cert, _key, _write

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


#: The variables the example reads its token and TLS files from, left out of the environment
#: it runs with unless a test sets them.
CREDENTIAL_VARIABLES = (
    "MODELPLANE_TOKEN",
    "MODELPLANE_TLS_CA",
    "MODELPLANE_TLS_CERT",
    "MODELPLANE_TLS_KEY",
)


def _register(binary: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The built example run with ``argv``, in an environment without credentials but ``env``."""
    inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    return subprocess.run(
        [str(binary), *argv],
        cwd=GO_ROOT,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class TlsTokenServer:
    """A control plane asking for a token and a client certificate, with the PEM files of its
    CA and of a client certificate that CA signed."""

    server: TokenServer
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def token_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """A control plane with access control (``--auth tokens:FILE``): a developer's token."""
    server = start_token_server(tmp_path_factory.mktemp("tokens"), {"go-ci": (["developer"], [])})
    yield server
    server.cp.handle.stop(0)


@pytest.fixture(scope="module")
def mtls_token_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTokenServer]:
    """Tokens over mutual TLS, with certificates from a test CA."""
    tmp = tmp_path_factory.mktemp("mtls-tokens")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca, _ = _write(tmp, "ca", _cert("test-ca", ca_key, "test-ca", ca_key, ca=True), ca_key)
    server_cert, server_key_path = _write(
        tmp, "server", _cert("localhost", server_key, "test-ca", ca_key, server=True), server_key
    )
    client_cert, client_key_path = _write(
        tmp, "client", _cert("go-ci", client_key, "test-ca", ca_key), client_key
    )
    server = start_token_server(
        tmp / "cp",
        {"go-ci": (["developer"], [])},
        tls_cert=str(server_cert),
        tls_key=str(server_key_path),
        client_ca=str(ca),
    )
    yield TlsTokenServer(server, ca, client_cert, client_key_path)
    server.cp.handle.stop(0)


def test_go_example_logs_in_with_a_token_from_modelplane_token_or_token(
    register_binary: Path, token_controlplane: TokenServer, classifier: Classifier
) -> None:
    # As a CI job would run it against a control plane with access control: the token comes
    # from MODELPLANE_TOKEN (as the CLI's does) or -token; it names the caller, not -as.
    model = f"go-{uuid.uuid4().hex[:8]}"
    address, token = token_controlplane.address, token_controlplane.tokens["go-ci"]
    argv = ["-server", address, "-model", model, "-onnx", str(classifier.onnx)]
    first = _register(register_binary, *argv, MODELPLANE_TOKEN=token)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created models/{model}" in first.stdout
    assert "gate production: passed" in first.stdout
    second = _register(register_binary, *argv, "-token", token, "-as", "someone-else")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"registered models/{model}/versions/2" in second.stdout
    with token_controlplane.client("go-ci") as client:
        assert client.get_version(model, 1).created_by == "go-ci"
        assert client.get_version(model, 2).created_by == "go-ci"

    fresh = f"go-{uuid.uuid4().hex[:8]}"
    refused = _register(
        register_binary, "-server", address, "-model", fresh, "-onnx", str(classifier.onnx)
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "UNAUTHENTICATED MISSING_CREDENTIALS" in refused.stderr
    assert "created" not in refused.stdout


def test_go_example_speaks_mutual_tls_with_the_clis_options_and_variables(
    register_binary: Path, mtls_token_controlplane: TlsTokenServer, classifier: Classifier
) -> None:
    tls = mtls_token_controlplane
    model = f"go-{uuid.uuid4().hex[:8]}"
    argv = ["-server", tls.server.address, "-model", model, "-onnx", str(classifier.onnx)]
    token = tls.server.tokens["go-ci"]
    by_flags = _register(
        register_binary,
        *argv,
        "-token",
        token,
        "-tls-ca",
        str(tls.ca),
        "-tls-cert",
        str(tls.client_cert),
        "-tls-key",
        str(tls.client_key),
    )
    assert by_flags.returncode == 0, by_flags.stdout + by_flags.stderr
    assert f"registered models/{model}/versions/1" in by_flags.stdout
    by_env = _register(
        register_binary,
        *argv,
        MODELPLANE_TOKEN=token,
        MODELPLANE_TLS_CA=str(tls.ca),
        MODELPLANE_TLS_CERT=str(tls.client_cert),
        MODELPLANE_TLS_KEY=str(tls.client_key),
    )
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert f"registered models/{model}/versions/2" in by_env.stdout
    # Plaintext to a TLS server does not get an answer: unreachable (4), as the CLI says.
    plain = _register(register_binary, *argv, "-timeout", "10s", MODELPLANE_TOKEN=token)
    assert plain.returncode == 4, plain.stdout + plain.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-as", "josé"], "error: -as: client: principal \"josé\" holds 'é' that gRPC metadata"),
        (["-token", "tök-0123456789abcdef"], "error: -token: client: token holds a character"),
        (["-tls-cert", "go.mod"], "error: -tls-cert and -tls-key: give both"),
        (["-tls-ca", "go.mod"], "error: -tls-ca: go.mod holds no PEM certificate"),
        (["-tls-ca", "nope.pem"], "error: -tls-ca: open nope.pem: no such file"),
    ],
    ids=["accented-as", "accented-token", "cert-without-key", "ca-not-pem", "ca-missing"],
)
def test_go_example_exits_2_on_a_principal_token_or_tls_file_it_cannot_use(
    register_binary: Path, argv: list[str], says: str
) -> None:
    result = _register(
        register_binary, "-server", "127.0.0.1:1", "-model", "m", "-onnx", "go.mod", *argv
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "tök" not in result.stderr
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
