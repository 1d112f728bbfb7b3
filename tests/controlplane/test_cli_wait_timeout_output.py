"""A wait that timed out (exit 5) prints the same thing whichever command waited: the operation
as it stands, on stdout, as ``operations get`` prints it (its name is what to wait on again),
for ``evaluate --wait`` as for ``operations wait``, in JSON and in a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_evaluation_control import dataset, register


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def test_both_waits_print_the_operation_when_they_time_out(
    cli: Cli, controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id, version = register(c, tmp_path, 10**12)  # runs until cancelled
    evaluate = ("evaluate", model_id, str(version), "--data", str(dataset(tmp_path)))
    code, out, err = cli.run(*evaluate, "--label", "target", "--wait", "--wait-timeout", "0.5")
    try:
        assert code == 5, err
        started = json.loads(out)
        name = started["name"]
        assert started["done"] is False and started["target"].endswith(f"/versions/{version}")
        assert f"modelplane operations wait {name}" in err and "OPERATION_TIMEOUT" in err

        code, out, err = cli.run("operations", "wait", name, "--timeout", "0.5")
        assert code == 5 and "still running" in err
        waited = json.loads(out)
        assert waited["name"] == name and waited.keys() == started.keys()

        code, out, _ = cli.run("operations", "wait", name, "--timeout", "0.2", output="table")
        assert code == 5 and name in out
        code, out, _ = cli.run(
            *evaluate, "--label", "target", "--wait", "--wait-timeout", "0.2", output="table"
        )
        assert code == 5 and "operations/" in out and "False" in out
    finally:
        with controlplane.client() as c:
            for op in c.list_operations(target=f"models/{model_id}/versions/{version}").operations:
                c.cancel_operation(op.name)
