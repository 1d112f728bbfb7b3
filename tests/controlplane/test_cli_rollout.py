"""The ``deployments`` and ``rollout`` CLI commands against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _model(client: Client, tmp_path: Path) -> str:
    name = unique()
    client.create_model(name)
    for seed in (0, 1):
        path = save(mlp(8, (16,), 2, seed=seed), tmp_path / f"{name}-{seed}.onnx")
        client.register_version(name, path, capture_env=False)
    return name


def test_deployment_and_rollout_lifecycle(cli: Cli, client: Client, tmp_path: Path) -> None:
    model = _model(client, tmp_path)
    created = cli.json(
        "deployments",
        "create",
        model,
        "--model",
        model,
        "--champion",
        "1",
        "--guard",
        "candidate.error_rate <= 0.05",
        "--drift-max-psi",
        "0.3",
        "--drift-cooldown",
        "5m",
    )
    assert created["name"] == f"deployments/{model}"
    assert created["guards"] == ["candidate.error_rate <= 0.05"]
    assert created["drift_thresholds"]["max_psi"] == 0.3
    assert created["drift_thresholds"]["cooldown"] == "300s"
    assert f"deployments/{model}" in [
        d["name"] for d in cli.json("deployments", "list")["deployments"]
    ]

    none = cli.json("rollout", "status", model)
    assert none["state"] is None and none["champion_version"] == 1

    started = cli.json(
        "rollout",
        "start",
        model,
        "--candidate",
        "2",
        "--strategy",
        "canary",
        "--steps",
        "10,50,100",
        "--step-duration",
        "10m",
        "--min-requests",
        "50",
        "--guard",
        "candidate.latency_p99 <= 0.5",
    )
    assert started["state"] == "running" and started["phase"] == "canary"
    assert started["candidate_percent"] == 10.0
    status = cli.json("rollout", "status", model)
    assert {"state", "phase", "step", "champion_version", "candidate_version", "evidence"} <= set(
        status
    )
    assert (status["champion_version"], status["candidate_version"], status["step"]) == (1, 2, 0)
    # The rollout's guard adds to the deployment's.
    assert set(status["effective_guards"]) == {
        "candidate.error_rate <= 0.05",
        "candidate.latency_p99 <= 0.5",
    }

    assert cli.json("rollout", "pause", model, "--reason", "hold")["state"] == "paused"
    assert cli.json("rollout", "resume", model)["state"] == "running"
    promoted = cli.json("rollout", "promote", model, "--reason", "looks good")
    assert promoted["state"] == "promoted" and promoted["champion_version"] == 2
    assert cli.json("deployments", "get", model)["champion_version"] == "2"

    # --watch on an ended rollout prints its status once, as a JSON line, and exits.
    code, out, _ = cli.run("rollout", "status", model, "--watch")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 1 and lines[0]["state"] == "promoted"

    updated = cli.json("deployments", "update", model, "--clear-guards")
    assert updated.get("guards", []) == []


def test_rollout_bad_input_exit_codes(cli: Cli, client: Client, tmp_path: Path) -> None:
    model = _model(client, tmp_path)
    cli.json("deployments", "create", model, "--model", model, "--champion", "1")
    code, _, err = cli.run("rollout", "start", model, "--candidate", "2", "--strategy", "bogus")
    assert code == 2
    code, _, err = cli.run(
        "rollout", "start", model, "--candidate", "2", "--strategy", "canary", "--steps", "50,10"
    )
    assert code == 3 and "INVALID_STEPS" in err
    code, _, err = cli.run(
        "rollout", "start", model, "--candidate", "2", "--strategy", "canary", "--steps", "a,b"
    )
    assert code == 2 and "--steps" in err
    code, _, err = cli.run("rollout", "start", model, "--candidate", "1", "--strategy", "canary")
    assert code == 3 and "CANDIDATE_IS_CHAMPION" in err
    code, _, err = cli.run(
        "rollout",
        "start",
        model,
        "--candidate",
        "2",
        "--strategy",
        "canary",
        "--step-duration",
        "ten",
    )
    assert code == 2 and "duration" in err
    code, _, err = cli.run("rollout", "resume", model)
    assert code == 3 and "FAILED_PRECONDITION" in err
    code, _, err = cli.run("rollout", "status", unique("missing"))
    assert code == 3 and "NOT_FOUND" in err
    code, _, err = cli.run("deployments", "update", model)
    assert code == 2
    code, _, err = cli.run(
        "deployments", "create", unique(), "--model", model, "--champion", "1", "--guard", "a +"
    )
    assert code == 3 and "INVALID_GUARD" in err


@pytest.mark.parametrize(
    ("flag", "value", "strategy"),
    [
        ("--split", "0", "ab"),
        ("--shadow-fraction", "0", "shadow"),
        ("--min-requests", "0", "canary"),
        ("--step-duration", "0s", "canary"),
        ("--split", "-5", "ab"),
        ("--shadow-fraction", "nan", "shadow"),
    ],
)
def test_rollout_settings_of_zero_are_refused_not_sent_as_the_default(
    cli: Cli, client: Client, tmp_path: Path, flag: str, value: str, strategy: str
) -> None:
    model = _model(client, tmp_path)
    cli.json("deployments", "create", model, "--model", model, "--champion", "1")
    argv = ["rollout", "start", model, "--candidate", "2", "--strategy", strategy, flag, value]
    code, out, err = cli.run(*argv)
    assert (code, out) == (2, "") and flag in err, err
    assert not client.get_deployment(model).HasField("rollout")  # nothing started
    key = flag.lstrip("-").replace("-", "_")
    number = 0 if key == "min_requests" else 0.0
    with pytest.raises(InvalidArgument) as refused:
        client.start_rollout(model, 2, strategy=strategy, **{key: number})
    reasons = {
        "split": "INVALID_SPLIT",
        "shadow_fraction": "INVALID_SHADOW_FRACTION",
        "min_requests": "INVALID_MIN_REQUESTS",
        "step_duration": "INVALID_DURATION",
    }
    assert refused.value.reason == reasons[key] and key in refused.value.message
    assert not client.get_deployment(model).HasField("rollout")


@pytest.mark.parametrize("action", ["abort", "rollback"])
def test_rollout_status_watch_exits_1_when_the_rollout_did_not_promote(
    cli: Cli, client: Client, tmp_path: Path, action: str
) -> None:
    model = _model(client, tmp_path)
    cli.json("deployments", "create", model, "--model", model, "--champion", "1")
    cli.json("rollout", "start", model, "--candidate", "2", "--strategy", "canary")
    ended = cli.json("rollout", action, model, "--reason", "no")
    code, out, err = cli.run("rollout", "status", model, "--watch")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1, err
    assert [line["state"] for line in lines] == [ended["state"]]
    assert ended["state"] in {"aborted", "rolled_back"}


def test_updating_one_drift_threshold_keeps_the_others(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    model = _model(client, tmp_path)
    cli.json(
        "deployments",
        "create",
        model,
        "--model",
        model,
        "--champion",
        "1",
        "--drift-max-psi",
        "0.2",
        "--drift-max-share",
        "0.5",
        "--drift-min-rows",
        "300",
    )
    updated = cli.json("deployments", "update", model, "--drift-cooldown", "1h")
    t = updated["drift_thresholds"]
    assert (t["max_psi"], t["max_drifted_share"], t["min_rows"], t["cooldown"]) == (
        0.2,
        0.5,
        "300",
        "3600s",
    )
    t = cli.json("deployments", "update", model, "--drift-max-psi", "0.3")["drift_thresholds"]
    assert (t["max_psi"], t["max_drifted_share"], t["min_rows"], t["cooldown"]) == (
        0.3,
        0.5,
        "300",
        "3600s",
    )
    # An etag given is still the one checked: a stale one is refused, nothing changes.
    stale = client.get_deployment(model).etag
    client.update_deployment(model, description="moved on")
    code, _, err = cli.run("deployments", "update", model, "--drift-min-rows", "5", "--etag", stale)
    assert code == 3 and "ABORTED" in err, err
    assert client.get_deployment(model).drift_thresholds.min_rows == 300
