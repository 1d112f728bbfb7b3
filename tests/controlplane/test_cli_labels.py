"""Labels through the CLI against a real server: `models update` and `versions update` clear
them with --clear-labels, and with labels given too (--label, --set-label) clear the others
and set those."""

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


@pytest.fixture
def version(client: Client, tmp_path: Path) -> str:
    """A model with labels, and its version 1 with labels."""
    name = unique()
    client.create_model(name, labels={"team": "risk", "tier": "1"})
    path = save(mlp(4, (8,), 2), tmp_path / "m.onnx")
    client.register_version(name, path, capture_env=False, labels={"stage": "beta", "x": "y"})
    return name


def test_versions_update_clears_labels(cli: Cli, client: Client, version: str) -> None:
    got = cli.json("versions", "update", version, "1", "--clear-labels")
    assert got["labels"] == {}
    assert dict(client.get_version(version, 1).labels) == {}
    # The description is left as it was.
    assert client.get_version(version, 1).description == ""


def test_versions_update_clear_labels_with_set_label_keeps_only_those(
    cli: Cli, client: Client, version: str
) -> None:
    got = cli.json("versions", "update", version, "1", "--clear-labels", "--set-label", "stage=ga")
    assert got["labels"] == {"stage": "ga"}
    assert dict(client.get_version(version, 1).labels) == {"stage": "ga"}


def test_models_update_clear_labels_with_label_keeps_only_those(
    cli: Cli, client: Client, version: str
) -> None:
    got = cli.json("models", "update", version, "--label", "a=b", "--clear-labels")
    assert got["labels"] == {"a": "b"}
    assert dict(client.get_model(version).labels) == {"a": "b"}
    assert cli.json("models", "update", version, "--clear-labels")["labels"] == {}


@pytest.mark.parametrize("command", [("models", "update"), ("versions", "update")])
def test_update_help_says_what_clear_labels_does_with_labels(
    cli: Cli, command: tuple[str, str]
) -> None:
    code, out, _ = cli.run(*command, "--help")
    help_text = " ".join(out.split())
    assert code == 0
    assert "--clear-labels remove every label; with --" in help_text
    assert "only the labels given remain" in help_text
