"""Every command that names a version takes ``@ALIAS`` where ``versions get`` does: the commands
whose call takes a version number only (``alias set``, ``versions update|archive|verify``,
``gate``, ``approve``, ``deployments create --champion``, ``rollout start --candidate``) resolve
the alias once, when they run (as ``versions get`` does: GetModelVersion), and name the version
it pointed at on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import register_versions


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


@pytest.fixture
def model(client: Client, tmp_path: Path) -> tuple[str, list[int]]:
    """A model with three versions, its alias ``champion`` on the first."""
    model_id, versions = register_versions(client, tmp_path, 3)
    client.set_alias(model_id, "champion", versions[0])
    return model_id, versions


def _json(cli: Cli, *argv: str, principal: str = "alice") -> tuple[dict, str]:  # type: ignore[type-arg]
    code, out, err = cli.run(*argv, principal=principal)
    assert code == 0, err
    return json.loads(out), err


def test_commands_that_take_a_number_resolve_an_alias_once(
    cli: Cli, client: Client, model: tuple[str, list[int]]
) -> None:
    model_id, versions = model
    first = f"models/{model_id}/versions/{versions[0]}"
    note = f"note: @champion points at {first}: using version {versions[0]}"

    alias, err = _json(cli, "alias", "set", model_id, "staging", "@champion", "--reason", "copy")
    assert alias["version"] == first and note in err
    # staging was set to what champion pointed at then: it stays when champion moves.
    client.set_alias(model_id, "champion", versions[1])
    assert client.get_alias(model_id, "staging").version == first

    updated, err = _json(cli, "versions", "update", model_id, "@staging", "--description", "x")
    assert updated["name"] == first and updated["description"] == "x"
    assert f"note: @staging points at {first}" in err
    verified, err = _json(cli, "versions", "verify", model_id, "@staging")
    assert verified["ok"] is True and f"@staging points at {first}" in err
    client.create_policy(unique("p"), target="production", rules=["true"])
    decision, err = _json(cli, "gate", model_id, "@staging", "--target", "production")
    assert decision["name"].startswith(f"{first}/") and "@staging points at" in err
    approval, err = _json(
        cli,
        *("--roles", "approver", "approve", model_id, "@staging", "--target", "production"),
        principal="rita",  # not the version's creator
    )
    assert approval["name"].startswith(f"{first}/") and "@staging points at" in err

    deployment = unique("d")
    created, err = _json(
        cli, "deployments", "create", deployment, "--model", model_id, "--champion", "@staging"
    )
    assert int(created["champion_version"]) == versions[0] and "@staging points at" in err
    client.set_alias(model_id, "next", versions[2])
    started, err = _json(
        cli, "rollout", "start", deployment, "--candidate", "@next", "--strategy", "canary"
    )
    assert int(started["candidate_version"]) == versions[2]
    assert f"@next points at models/{model_id}/versions/{versions[2]}" in err

    # A version an alias points at is never archived: refused for its alias, not its name.
    code, out, err = cli.run("versions", "archive", model_id, "@staging")
    assert (code, out) == (3, "") and "VERSION_HAS_ALIASES" in err and first in err


def test_an_alias_that_does_not_exist(cli: Cli, model: tuple[str, list[int]]) -> None:
    model_id, _ = model
    code, out, err = cli.run("alias", "set", model_id, "staging", "@nope")
    assert (code, out) == (3, "") and "NOT_FOUND" in err
    assert "is invalid" not in err and f"models/{model_id}/aliases/nope" in err
    code, out, err = cli.run("deployments", "create", unique("d"), "--model", model_id,
                             "--champion", "one")  # fmt: skip
    assert (code, out) == (2, "") and "--champion" in err and "@ALIAS" in err
