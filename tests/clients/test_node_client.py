"""The TypeScript client (clients/node) against a live control plane: its own node:test suite
(with a control plane that serves one watch at a time and one that asks for client
certificates beside the plain one), and the register-and-gate example as a CI job would run
it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelplane import Client
from tests.clients.conftest import ROOT, Classifier, LiveControlPlane
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_auth_tls import _cert, _key, _write

NODE = ROOT / "clients" / "node"
EXAMPLE = NODE / "dist" / "examples" / "register-and-gate.js"


def npm_ci_if_needed() -> None:
    """`npm ci` when node_modules is missing or older than package-lock.json (as make does)."""
    marker = NODE / "node_modules" / ".package-lock.json"
    lock = NODE / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE, check=True, capture_output=True
    )


@pytest.fixture(scope="module")
def node_built() -> Iterator[None]:
    """Dependencies installed and the TypeScript (client, tests, example) compiled."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js 20 and npm are not installed")
    npm_ci_if_needed()
    build = subprocess.run(
        ["npm", "run", "--silent", "build"], cwd=NODE, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout + build.stderr
    yield


@pytest.fixture(scope="module")
def one_watch_controlplane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningControlPlane]:
    """A control plane that refuses a second watch while one is open (TOO_MANY_WATCHES)."""
    tmp = tmp_path_factory.mktemp("one-watch")
    cp = start_controlplane(tmp, f"sqlite:///{tmp / 'cp.db'}", max_watches=1)
    yield cp
    cp.handle.stop(0)


@dataclass
class MutualTls:
    """A control plane asking for client certificates, and the PEM files of its CA and of a
    client certificate that CA signed."""

    cp: RunningControlPlane
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def mtls_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTls]:
    """TLS with client certificates from a test CA (no access control: loopback)."""
    tmp = tmp_path_factory.mktemp("mtls")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca_cert = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    ca, _ = _write(tmp, "ca", ca_cert, ca_key)
    server = _cert("localhost", server_key, "test-ca", ca_key, server=True)
    server_cert, server_key_path = _write(tmp, "server", server, server_key)
    client = _cert("node-ci", client_key, "test-ca", ca_key)
    client_cert, client_key_path = _write(tmp, "client", client, client_key)
    cp = start_controlplane(
        tmp,
        f"sqlite:///{tmp / 'cp.db'}",
        tls_cert=str(server_cert),
        tls_key=str(server_key_path),
        client_ca=str(ca),
    )
    yield MutualTls(cp, ca, client_cert, client_key_path)
    cp.handle.stop(0)


def _test_files() -> list[str]:
    """The compiled test files, sorted, relative to clients/node: from Node 21 on, `node --test`
    takes globs and loads a directory as a module, so it is given the files themselves."""
    files = sorted(
        p.relative_to(NODE).as_posix() for p in (NODE / "dist" / "test").glob("*.test.js")
    )
    assert files, "no compiled tests under dist/test"
    return files


def test_npm_test_names_the_test_files_not_their_directory() -> None:
    script = json.loads((NODE / "package.json").read_text())["scripts"]["test"]
    run = shlex.split(script.split("&&")[-1])
    assert run[:2] == ["node", "--test"], script
    assert run[2:] == ["dist/test/*.test.js"], script  # sh expands it; Node 21+ would too


@pytest.fixture(scope="module")
def token_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """A control plane with access control (``--auth tokens:FILE``): a developer's token."""
    server = start_token_server(tmp_path_factory.mktemp("tokens"), {"node-ci": (["developer"], [])})
    yield server
    server.cp.handle.stop(0)


#: The variables the example reads its token and TLS files from, left out of the environment
#: the harness runs it with unless a test sets them.
CREDENTIAL_VARIABLES = (
    "MODELPLANE_TOKEN",
    "MODELPLANE_TLS_CA",
    "MODELPLANE_TLS_CERT",
    "MODELPLANE_TLS_KEY",
)


def _run(args: list[str], address: str, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    return subprocess.run(
        args,
        cwd=NODE,
        env={**inherited, "MODELPLANE_SERVER": address, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_node_suite_passes_against_a_live_control_plane(
    node_built: None,
    live_controlplane: LiveControlPlane,
    one_watch_controlplane: RunningControlPlane,
    mtls_controlplane: MutualTls,
    classifier: Classifier,
) -> None:
    result = _run(
        ["node", "--test", *_test_files()],
        live_controlplane.address,
        MODELPLANE_TEST_ONNX=str(classifier.onnx),
        MODELPLANE_ONE_WATCH_SERVER=one_watch_controlplane.address,
        MODELPLANE_MTLS_SERVER=mtls_controlplane.cp.address,
        MODELPLANE_TLS_CA=str(mtls_controlplane.ca),
        MODELPLANE_TLS_CERT=str(mtls_controlplane.client_cert),
        MODELPLANE_TLS_KEY=str(mtls_controlplane.client_key),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
    assert "# SKIP" not in result.stdout  # every live suite got its servers
    passed = next(line for line in result.stdout.splitlines() if line.startswith("# pass "))
    assert int(passed.split()[-1]) >= 15


def test_npm_test_on_its_own_skips_the_live_suites_saying_how_to_run_them(
    node_built: None,
) -> None:
    # Without the harness's variables, the live test files threw at import: npm test failed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    result = subprocess.run(
        ["npm", "test"], cwd=NODE, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if "# SKIP" in line]
    assert len(skipped) == 3, result.stdout
    assert all("pytest tests/clients/test_node_client.py" in line for line in skipped)
    assert (
        "MODELPLANE_SERVER, MODELPLANE_ONE_WATCH_SERVER, MODELPLANE_TEST_ONNX unset" in skipped[0]
    )
    assert "statusName spells each of the 17 codes" in result.stdout  # the rest still runs


def test_example_registers_a_version_and_passes_an_unbound_gate(
    node_built: None, live_controlplane: LiveControlPlane, classifier: Classifier
) -> None:
    model = f"ts-{uuid.uuid4().hex[:8]}"
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    first = _run([*argv, "--target", "production"], live_controlplane.address)
    assert first.returncode == 0, first.stderr
    assert f"created models/{model}" in first.stdout
    assert f"registered models/{model}/versions/1" in first.stdout
    assert "gate production: passed" in first.stdout

    second = _run([*argv, "--as", "ts-ci"], live_controlplane.address)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout
    with Client(live_controlplane.address) as client:
        v2 = client.get_version(model, 2)
    assert v2.created_by == "ts-ci"
    assert dict(v2.labels) == {"source": "node-example"}


def test_example_logs_in_with_a_token_from_modelplane_token_or_token(
    node_built: None, token_controlplane: TokenServer, classifier: Classifier
) -> None:
    # As a CI job would run it against a control plane with access control: the token comes
    # from MODELPLANE_TOKEN (as the CLI's does) or --token; it names the caller, not --as.
    model = f"ts-{uuid.uuid4().hex[:8]}"
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    address, token = token_controlplane.address, token_controlplane.tokens["node-ci"]
    first = _run(argv, address, MODELPLANE_TOKEN=token)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created models/{model}" in first.stdout
    assert "gate production: passed" in first.stdout
    second = _run([*argv, "--token", token, "--as", "someone-else"], address)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"registered models/{model}/versions/2" in second.stdout
    with token_controlplane.client("node-ci") as client:
        assert client.get_version(model, 1).created_by == "node-ci"
        assert client.get_version(model, 2).created_by == "node-ci"

    fresh = f"ts-{uuid.uuid4().hex[:8]}"
    refused = _run(
        ["node", str(EXAMPLE), "--model", fresh, "--onnx", str(classifier.onnx)], address
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "UNAUTHENTICATED MISSING_CREDENTIALS" in refused.stderr
    assert "created" not in refused.stdout


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--as", "josé"], 'error: --as: principal "josé" holds "é" that gRPC metadata cannot'),
        (["--token", "tök-0123456789abcdef"], "error: --token: token holds a character"),
        (["--tls-cert", "client.crt"], "error: --tls-cert and --tls-key: give both"),
        (["--tls-ca", "package.json"], "error: --tls-ca: package.json holds no PEM block"),
        (["--tls-ca", "nope.pem"], "error: --tls-ca: ENOENT"),
    ],
    ids=["accented-as", "accented-token", "cert-without-key", "ca-not-pem", "ca-missing"],
)
def test_example_exits_2_on_a_principal_token_or_tls_file_it_cannot_use(
    node_built: None, argv: list[str], says: str
) -> None:
    result = _run(
        ["node", str(EXAMPLE), "--model", "m", "--onnx", "package.json", *argv], "127.0.0.1:1"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "tök" not in result.stderr
    assert "usage: register-and-gate" in result.stderr


def test_example_speaks_mutual_tls_with_the_clis_options_and_variables(
    node_built: None, mtls_controlplane: MutualTls, classifier: Classifier
) -> None:
    model = f"ts-{uuid.uuid4().hex[:8]}"
    address = mtls_controlplane.cp.address
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    files = {
        "--tls-ca": mtls_controlplane.ca,
        "--tls-cert": mtls_controlplane.client_cert,
        "--tls-key": mtls_controlplane.client_key,
    }
    by_flags = _run([*argv, *(a for kv in files.items() for a in map(str, kv))], address)
    assert by_flags.returncode == 0, by_flags.stdout + by_flags.stderr
    assert f"registered models/{model}/versions/1" in by_flags.stdout
    by_env = _run(
        argv,
        address,
        MODELPLANE_TLS_CA=str(mtls_controlplane.ca),
        MODELPLANE_TLS_CERT=str(mtls_controlplane.client_cert),
        MODELPLANE_TLS_KEY=str(mtls_controlplane.client_key),
    )
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert f"registered models/{model}/versions/2" in by_env.stdout


@pytest.mark.parametrize("timeout", ["10.0005s", "30.3333", "2500.5ms"])
def test_example_takes_a_timeout_that_is_not_whole_milliseconds(
    node_built: None, live_controlplane: LiveControlPlane, classifier: Classifier, timeout: str
) -> None:
    # Sent as it was, the deadline was grpc-timeout "10000.5m", which the server refuses
    # (INTERNAL: Error parsing 'grpc-timeout' metadata, exit 3): it is rounded up to whole ms.
    model = f"ts-{uuid.uuid4().hex[:8]}"
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    result = _run([*argv, "--timeout", timeout], live_controlplane.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"registered models/{model}/versions/1" in result.stdout
    assert "gate production: passed" in result.stdout


def test_example_exits_1_when_the_gate_fails(
    node_built: None, live_controlplane: LiveControlPlane, classifier: Classifier
) -> None:
    model, target = f"ts-{uuid.uuid4().hex[:8]}", f"release-{uuid.uuid4().hex[:8]}"
    with Client(live_controlplane.address, principal="ops-admin") as admin:
        admin.create_policy(
            f"p-{uuid.uuid4().hex[:8]}", target=target, rules=["metrics.roc_auc >= 0.9"]
        )
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(classifier.onnx)]
    result = _run([*argv, "--target", target], live_controlplane.address)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "] metrics.roc_auc >= 0.9" in result.stdout
    assert f"gate {target}: failed" in result.stdout


def test_example_reports_the_status_and_reason_of_a_bad_model_id(
    node_built: None, live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    result = _run(
        ["node", str(EXAMPLE), "--model", "Bad_Id", "--onnx", str(classifier.onnx)],
        live_controlplane.address,
    )
    assert result.returncode == 3
    assert "INVALID_ARGUMENT INVALID_NAME" in result.stderr
    assert "lowercase ASCII letters" in result.stderr
    with Client(live_controlplane.address) as client:
        assert all(m.name != "models/Bad_Id" for m in client.list_models())


def test_example_exits_4_when_the_server_is_unreachable(
    node_built: None, classifier: Classifier
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    argv = ["node", str(EXAMPLE), "--model", "m", "--onnx", str(classifier.onnx)]
    result = _run([*argv, "--server", closed], closed)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "UNAVAILABLE" in result.stderr


def test_example_exits_4_when_the_server_does_not_answer_in_time(
    node_built: None, silent_server: str, classifier: Classifier
) -> None:
    # DEADLINE_EXCEEDED is "could not be reached or did not answer in time", as UNAVAILABLE
    # is: 4, as the CLI and the Go example exit, not 3 (a server's error answer).
    argv = ["node", str(EXAMPLE), "--model", "m", "--onnx", str(classifier.onnx)]
    result = _run([*argv, "--server", silent_server, "--timeout", "1s"], silent_server)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "DEADLINE_EXCEEDED" in result.stderr


def test_example_exits_4_when_a_tls_server_closes_the_connection(
    node_built: None, mtls_controlplane: MutualTls, classifier: Classifier
) -> None:
    # The example speaks plaintext; a server asking for TLS and client certificates closes the
    # connection before any answer: UNAVAILABLE, as gRPC core reports it, not CANCELLED.
    address = mtls_controlplane.cp.address
    argv = ["node", str(EXAMPLE), "--model", "m", "--onnx", str(classifier.onnx)]
    result = _run([*argv, "--server", address], address)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "UNAVAILABLE" in result.stderr
    assert "closed the connection before answering" in result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--model", "m", "--onnx", "m.onnx", "--bogus"], "error: Unknown option '--bogus'"),
        (["--model", "m"], "usage: "),
        (
            ["--model", "m", "--onnx", "m.onnx", "--server", "127.0.0.1:99999"],
            'error: --server: address "127.0.0.1:99999": port 99999 is not from 1 to 65535',
        ),
        (
            ["--model", "m", "--onnx", "m.onnx", "--server", "not a host"],
            'error: --server: address "not a host": not HOST:PORT',
        ),
        (
            ["--model", "m", "--onnx", "m.onnx", "--timeout", "soon"],
            'error: --timeout: "soon" is not seconds or a duration',
        ),
        (
            ["--model", "m", "--onnx", "m.onnx", "--timeout", "1000h"],
            "error: --timeout: timeoutMs 3600000000 is not a deadline",
        ),
    ],
)
def test_example_exits_2_on_a_usage_error(node_built: None, argv: list[str], says: str) -> None:
    # A mistyped option or server address must not read as a failed gate (1) in a CI job.
    result = subprocess.run(
        ["node", str(EXAMPLE), *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "usage: register-and-gate" in result.stderr
    assert "    at " not in result.stderr  # no stack trace


def test_example_exits_2_on_an_unreadable_onnx_file_before_any_call(
    node_built: None, live_controlplane: LiveControlPlane, tmp_path: Path
) -> None:
    # A CI job reads 1 as "gate failed"; a missing file is a usage error, found before the
    # model is created.
    model = f"ts-{uuid.uuid4().hex[:8]}"
    missing = tmp_path / "nope.onnx"
    argv = ["node", str(EXAMPLE), "--model", model, "--onnx", str(missing)]
    result = _run([*argv, "--server", live_controlplane.address], live_controlplane.address)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ENOENT"), result.stderr
    assert str(missing) in result.stderr
    assert "    at " not in result.stderr  # no stack trace
    assert "created" not in result.stdout
    with Client(live_controlplane.address) as client:
        assert all(m.name != f"models/{model}" for m in client.list_models())
