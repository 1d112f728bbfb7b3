"""CLI commands at the edges of their options, against a real server: repeated label keys and
empty updates refused before anything is sent, names given in full, and JSON documents that
keep their keys whether or not there is something to fill them."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _model(client: Client, tmp_path: Path, versions: int = 1) -> str:
    name = unique()
    client.create_model(name)
    for seed in range(versions):
        path = save(mlp(8, (16,), 2, seed=seed), tmp_path / f"{name}-{seed}.onnx")
        client.register_version(name, path, capture_env=False)
    return name


def test_alias_delete_names_a_full_model_name_once(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    model = _model(client, tmp_path)
    for given in (model, f"models/{model}"):
        client.set_alias(model, "champion", 1)
        deleted = cli.json("alias", "delete", given, "champion")
        assert deleted == {"deleted": f"models/{model}/aliases/champion"}


def test_a_label_key_given_twice_is_a_usage_error(cli: Cli, client: Client, tmp_path: Path) -> None:
    twice = ("--label", "team=risk", "--label", "team=fraud")
    name = unique()
    code, out, err = cli.run("models", "create", name, *twice)
    assert (code, out) == (2, "") and "'team'" in err and "more than once" in err
    assert cli.run("models", "get", name)[0] == 3  # nothing was created

    model = _model(client, tmp_path)
    code, out, err = cli.run("models", "update", model, *twice)
    assert (code, out) == (2, "") and "more than once" in err
    assert dict(client.get_model(model).labels) == {}

    dep = unique("d")
    code, out, err = cli.run(
        "deployments", "create", dep, "--model", model, "--champion", "1", *twice
    )
    assert (code, out) == (2, "") and "more than once" in err
    assert cli.run("deployments", "get", dep)[0] == 3
    cli.json("deployments", "create", dep, "--model", model, "--champion", "1")
    code, out, err = cli.run("deployments", "update", dep, *twice)
    assert (code, out) == (2, "") and "more than once" in err
    assert dict(client.get_deployment(dep).labels) == {}


def test_models_update_with_nothing_to_change_is_a_usage_error(cli: Cli, client: Client) -> None:
    name = unique()
    client.create_model(name, description="scores")
    for extra in ((), ("--etag", "x")):
        code, out, err = cli.run("models", "update", name, *extra)
        assert (code, out) == (2, "") and "name something to change" in err
    assert cli.json("models", "update", name, "--clear-labels")["labels"] == {}


def test_versions_update_with_nothing_to_change_is_a_usage_error(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    name = _model(client, tmp_path)
    for extra in ((), ("--etag", "x")):
        code, out, err = cli.run("versions", "update", name, "1", *extra)
        assert (code, out) == (2, "") and "name something to change" in err
    assert cli.json("versions", "update", name, "1", "--description", "d")["description"] == "d"


def test_rollout_status_keeps_its_keys_without_a_rollout(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    model = _model(client, tmp_path, versions=2)
    cli.json("deployments", "create", model, "--model", model, "--champion", "1")
    none = cli.json("rollout", "status", model)
    assert none["state"] is None and none["effective_guards"] == []
    for key in ("candidate_percent", "strategy", "reason"):
        assert none[key] is None
    cli.json("rollout", "start", model, "--candidate", "2", "--strategy", "canary")
    running = cli.json("rollout", "status", model)
    assert list(none) == list(running)
