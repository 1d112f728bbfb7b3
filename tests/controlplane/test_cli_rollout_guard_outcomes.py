"""``rollout status`` in table mode tells a skipped guard (not judged on a window with too few
requests, which rolls nothing back) from a failed one, with the reason the evidence carries;
the JSON document keeps the guard results as the server sent them."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_cli_rollout_table import _cells
from tests.controlplane.test_deployments_api import Sidecar, deployed

GUARD = "candidate.error_rate <= 0.5"


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _guards(cli: Cli, dep: str) -> dict[str, list[str]]:
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    return {r[0]: r[1:3] for r in _cells(out) if len(r) == 4 and r[0].startswith("candidate.")}


def test_a_skipped_guard_is_shown_skipped_and_a_failed_one_failed(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(client, tmp_path, guards=[GUARD])
    code, _, err = cli.run(
        "rollout", "start", dep, "--candidate", str(versions[1]), "--strategy", "canary",
        "--steps", "10,100", "--step-duration", "1h",
    )  # fmt: skip
    assert code == 0, err

    side = Sidecar(client, dep)
    side.report(900, 5, candidate_errors=5)  # too few candidate requests to judge
    outcome, why = _guards(cli, dep)[GUARD]
    assert outcome == "skipped" and why.startswith("skipped: candidate has fewer than")
    doc = cli.json("rollout", "status", dep)
    assert doc["state"] == "running"
    [result] = [g for g in doc["evidence"]["guards"] if g["expression"] == GUARD]
    assert result["passed"] is False and result["error"] == why  # as the server sent it

    side.report(900, 100, candidate_errors=90)  # judged, and failed: rolled back
    assert cli.json("rollout", "status", dep)["state"] == "rolled_back"
    assert _guards(cli, dep)[GUARD] == ["no", ""]


@pytest.mark.parametrize(
    ("passed", "error", "shown"),
    [
        (True, "", "yes"),
        (False, "", "no"),
        (False, "skipped: no shadow in this window", "skipped"),
        (False, "not evaluated: division by zero", "not evaluated"),
    ],
)
def test_each_guard_outcome(passed: bool, error: str, shown: str) -> None:
    from modelplane.cli.rollout import guard_outcome
    from modelplane.v1 import deployments_pb2 as dp

    assert guard_outcome(dp.GuardResult(expression=GUARD, passed=passed, error=error)) == shown
