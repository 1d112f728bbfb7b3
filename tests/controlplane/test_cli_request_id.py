"""``--request-id`` on the CLI's mutating commands: a command run again with the id answers
what the first run did instead of applying it twice, and a change whose answer never came
back names the id to run it again with."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from modelplane.cli import main
from modelplane.v1 import registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def _run(
    capsys: pytest.CaptureFixture[str], address: str, *argv: str, timeout: str = "30"
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(
        ["--server", address, "--timeout", timeout, "--output", "json", "--as", "alice", *argv]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_a_registration_run_again_with_its_request_id_registers_once(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique()
    assert _run(capsys, controlplane.address, "models", "create", name)[0] == 0
    register = (
        "versions", "register", name, "--onnx", str(trained_model.onnx),
        "--dataset", f"train={trained_model.train}", "--label", "target",
        "--request-id", f"ci-build-{name}",
    )  # fmt: skip
    answers = []
    for _ in range(2):
        code, out, err = _run(capsys, controlplane.address, *register)
        assert code == 0, err
        answers.append(json.loads(out))
    assert answers[0]["name"] == answers[1]["name"] == f"models/{name}/versions/1"
    code, out, _ = _run(capsys, controlplane.address, "versions", "list", name)
    assert code == 0 and len(json.loads(out)["versions"]) == 1
    # Without the id, the same command registers another version.
    code, out, err = _run(capsys, controlplane.address, *register[:-2])
    assert code == 0, err
    assert json.loads(out)["name"] == f"models/{name}/versions/2"


def test_a_request_id_reused_for_another_change_is_refused(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique()
    rid = f"rid-{name}"
    assert _run(capsys, controlplane.address, "models", "create", name, "--request-id", rid)[0] == 0
    code, out, err = _run(
        capsys, controlplane.address, "models", "update", name, "--description", "x",
        "--request-id", rid,
    )  # fmt: skip
    assert code == 3 and out == ""
    assert "INVALID_ARGUMENT" in err and "(REQUEST_ID_REUSED)" in err
    code, out, _ = _run(capsys, controlplane.address, "models", "get", name)
    assert code == 0 and json.loads(out)["description"] == ""


class _SlowRegistry:
    """CreateModel that answers only after the caller's deadline has passed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def create(
        self, request: registry_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Model:
        with self.lock:
            self.seen.append(request.request_id)
        time.sleep(1.0)
        return registry_pb2.Model(name=f"models/{request.model_id}")


@pytest.fixture
def slow_server() -> Iterator[tuple[str, _SlowRegistry]]:
    registry = _SlowRegistry()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.unary_unary_rpc_method_handler(
        registry.create,
        request_deserializer=registry_pb2.CreateModelRequest.FromString,
        response_serializer=registry_pb2.Model.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "modelplane.v1.RegistryService", {"CreateModel": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", registry
    server.stop(0)


def test_a_change_with_no_answer_names_the_id_to_run_it_again_with(
    slow_server: tuple[str, _SlowRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    address, registry = slow_server
    code, out, err = _run(capsys, address, "models", "create", "m", timeout="0.3")
    assert code == 4 and out == ""
    assert len(registry.seen) == 1 and registry.seen[0]
    assert f"--request-id {registry.seen[0]}" in err
    # The id the user passed is the one sent, and the one named.
    code, _, err = _run(
        capsys, address, "models", "create", "m", "--request-id", "mine", timeout="0.3"
    )
    assert code == 4 and registry.seen[-1] == "mine" and "--request-id mine" in err


def test_reads_take_no_request_id(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, controlplane.address, "models", "get", "m", "--request-id", "x")
    assert code == 2 and out == ""
    assert "unrecognized arguments: --request-id" in err


def test_a_drift_update_run_again_with_its_request_id_replays(
    controlplane: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`deployments update --drift-*` reads the deployment and sends the etag it read: run
    again after the first run landed, it sends the newer etag, and is still the same request
    (an etag is a precondition, not part of the change)."""
    from tests.controlplane.test_deployments_api import register_versions

    with controlplane.client() as c:
        model_id, versions = register_versions(c, tmp_path, 1)
        deployment = unique("d")
        c.create_deployment(deployment, model=model_id, champion_version=versions[0])
    update = ("deployments", "update", deployment, "--drift-max-psi", "0.3")
    rid = f"rid-{deployment}"
    answers = []
    for _ in range(2):
        code, out, err = _run(capsys, controlplane.address, *update, "--request-id", rid)
        assert code == 0, err
        answers.append(json.loads(out))
    assert answers[0] == answers[1]
    # The same id for another change is still refused.
    code, _, err = _run(
        capsys, controlplane.address, "deployments", "update", deployment,
        "--drift-max-psi", "0.4", "--request-id", rid,
    )  # fmt: skip
    assert code == 3 and "(REQUEST_ID_REUSED)" in err
