"""The CI example against a live control plane: clients/ci/modelplane-ci.sh (register,
evaluate, gate, roll out) and the same steps as clients/ci/github-actions.yml runs them."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import yaml

from modelplane import Client
from modelplane.v1 import deployments_pb2, deployments_pb2_grpc
from tests.clients.conftest import BIN, ROOT, Classifier, LiveControlPlane

SCRIPT = ROOT / "clients" / "ci" / "modelplane-ci.sh"
WORKFLOW = ROOT / "clients" / "ci" / "github-actions.yml"


def _env(cp: LiveControlPlane, data: Classifier, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": str(BIN / "python"),
        "MODELPLANE_SERVER": cp.address,
        "ONNX": str(data.onnx),
        "TRAIN_DATA": str(data.train),
        "HOLDOUT_DATA": str(data.holdout),
        "LABEL": data.label,
        **extra,
    }


def _script(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _deployment_code(address: str, name: str) -> grpc.StatusCode:
    """OK when deployments/{name} exists, else the error code of GetDeployment."""
    with grpc.insecure_channel(address) as channel:
        stub = deployments_pb2_grpc.DeploymentServiceStub(channel)
        try:
            stub.GetDeployment(
                deployments_pb2.GetDeploymentRequest(name=f"deployments/{name}"), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_script_registers_evaluates_gates_and_rolls_out(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    model = f"ci-{uuid.uuid4().hex[:8]}"
    env = _env(live_controlplane, classifier, MODEL=model, ROLLOUT="on")
    with Client(live_controlplane.address, principal="ops-admin") as admin:
        admin.create_policy(
            f"p-{uuid.uuid4().hex[:8]}",
            target=f"deployments/{model}",
            rules=["metrics.roc_auc >= 0.95", 'evaluation.dataset_role == "holdout"'],
        )

    first = _script(env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "1"
    assert f"created models/{model}" in first.stderr
    with Client(live_controlplane.address) as client:
        v1 = client.get_version(model, 1)
        decisions = client.list_gate_decisions(model, 1)
    assert v1.baseline.row_count == 300
    assert {d.role for d in v1.lineage.datasets} == {"train", "holdout"}
    assert [d.passed for d in decisions] == [True]
    assert decisions[0].evaluation.startswith(f"models/{model}/versions/1/evaluations/")

    assert f"created deployments/{model} with v1 as champion" in first.stderr
    second = _script(env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "2"
    assert "canary rollout of v2 started (steps 10,50,100)" in second.stderr
    with Client(live_controlplane.address) as client:
        deployment = client.get_deployment(model)
    assert deployment.champion_version == 1
    assert deployment.rollout.candidate_version == 2
    assert list(deployment.rollout.steps) == [10, 50, 100]


def test_script_stops_at_a_failing_gate_with_exit_1(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    model = f"ci-{uuid.uuid4().hex[:8]}"
    with Client(live_controlplane.address, principal="ops-admin") as admin:
        admin.create_policy(
            f"p-{uuid.uuid4().hex[:8]}",
            target=f"deployments/{model}",
            rules=['approvals.exists(a, "risk" in a.roles && a.decision == "approve")'],
        )
    result = _script(_env(live_controlplane, classifier, MODEL=model), tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"the gate for deployments/{model} failed" in result.stderr
    assert result.stdout == ""
    with Client(live_controlplane.address) as client:
        decisions = client.list_gate_decisions(model, 1)
    assert [d.passed for d in decisions] == [False]
    assert _deployment_code(live_controlplane.address, model) == grpc.StatusCode.NOT_FOUND


def test_script_refuses_missing_inputs_before_calling_the_server(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    env = _env(live_controlplane, classifier, MODEL="")
    result = _script(env, tmp_path)
    assert result.returncode == 2
    assert "set MODEL" in result.stderr

    env = _env(live_controlplane, classifier, MODEL="ci-x", ONNX=str(tmp_path / "nope.onnx"))
    result = _script(env, tmp_path)
    assert result.returncode == 2
    assert "nope.onnx is not a file" in result.stderr
    with Client(live_controlplane.address) as client:
        assert all(m.name != "models/ci-x" for m in client.list_models())


def test_script_exits_4_when_the_server_is_unreachable(
    classifier: Classifier, tmp_path: Path, live_controlplane: LiveControlPlane
) -> None:
    env = _env(live_controlplane, classifier, MODEL="ci-y", MODELPLANE_SERVER="127.0.0.1:1")
    result = _script(env, tmp_path)
    assert result.returncode == 4
    assert "UNAVAILABLE" in result.stderr


def test_script_reports_a_server_error_with_exit_3(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    result = _script(_env(live_controlplane, classifier, MODEL="Bad_Id"), tmp_path)
    assert result.returncode == 3
    assert "INVALID_ARGUMENT" in result.stderr and "INVALID_NAME" in result.stderr


def _workflow_steps() -> list[dict[str, Any]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert set(workflow) >= {"name", "jobs", True}  # YAML 1.1 reads the `on` key as True
    return list(workflow["jobs"]["release"]["steps"])


def test_workflow_steps_run_against_a_live_control_plane(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    """Each step with an id runs as Actions runs it (bash -eo pipefail, $GITHUB_ENV carried)."""
    steps = {s["id"]: s for s in _workflow_steps() if "id" in s}
    assert list(steps) == ["register", "evaluate", "gate", "rollout"]
    assert all("${{" not in s["run"] for s in steps.values())
    model = f"gh-{uuid.uuid4().hex[:8]}"
    github_env = tmp_path / "github_env"
    github_env.touch()
    env = _env(
        live_controlplane,
        classifier,
        MODEL=model,
        DEPLOYMENT=model,
        ROLLOUT_STEPS="10,50,100",
        GITHUB_ENV=str(github_env),
        GITHUB_SHA="0" * 40,
        GITHUB_REPOSITORY="acme/fraud",
        GITHUB_RUN_ID="42",
    )
    for step_id, step in steps.items():
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"step {step_id}: {result.stdout}\n{result.stderr}"
        if step_id == "register":
            assert github_env.read_text() == "VERSION=1\n"
            with Client(live_controlplane.address) as client:
                v1 = client.get_version(model, 1)
            assert v1.lineage.code.commit == "0" * 40
            assert v1.lineage.code.repository == "https://github.com/acme/fraud"
            assert v1.lineage.training_run_id == "github-42"
    assert _deployment_code(live_controlplane.address, model) == grpc.StatusCode.OK


def test_script_refuses_a_rollout_switch_other_than_on_or_off(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    # ROLLOUT=false used to start a canary: anything but exactly "off" rolled out.
    for value in ("false", "no", "0"):
        model = f"ci-{uuid.uuid4().hex[:8]}"
        env = _env(live_controlplane, classifier, MODEL=model, ROLLOUT=value)
        result = _script(env, tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"ROLLOUT={value}: set it to on or off" in result.stderr
        with Client(live_controlplane.address) as client:  # refused before any call
            assert all(m.name != f"models/{model}" for m in client.list_models())


def test_script_reads_the_rollout_switch_in_any_case(
    live_controlplane: LiveControlPlane, classifier: Classifier, tmp_path: Path
) -> None:
    model = f"ci-{uuid.uuid4().hex[:8]}"
    env = _env(live_controlplane, classifier, MODEL=model, ROLLOUT="On")
    assert _script(env, tmp_path).returncode == 0  # creates the deployment with v1
    result = _script({**env, "ROLLOUT": "OFF"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert "ROLLOUT=off: stopping after the gate" in result.stderr
    with Client(live_controlplane.address) as client:
        deployment = client.get_deployment(model)
    assert deployment.champion_version == 1
    assert not deployment.rollout.candidate_version
