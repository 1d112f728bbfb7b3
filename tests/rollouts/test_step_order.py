"""Canary steps out of order, through a real control plane (gRPC on loopback) and the CLI:
descending or repeated steps are refused saying the steps must ascend (a step within 0.01% of
the one before, saying it routes the same traffic), and ``--steps`` with an empty item
(``10,,50``) is a usage error before anything is sent, rather than a rollout of fewer steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.errors import InvalidArgument
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import deployed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[RunningControlPlane]:
    """A control plane of its own (SQLite)."""
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    yield cp
    cp.handle.stop(0)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        pytest.param(
            [50, 10], "steps must ascend: step 1 (10%) is not above step 0 (50%)", id="descending"
        ),
        pytest.param(
            [10, 50, 20], "steps must ascend: step 2 (20%) is not above step 1 (50%)", id="dip"
        ),
        pytest.param(
            [10, 10], "steps must ascend: step 1 (10%) is not above step 0 (10%)", id="repeated"
        ),
        pytest.param(
            [10, 10.001],
            "step 1 (10.001%) routes the same traffic as step 0 (10%): steps must ascend by at "
            "least 0.01%",
            id="within-a-bucket",
        ),
    ],
)
def test_steps_that_do_not_ascend_are_refused_saying_so(
    plane: RunningControlPlane, tmp_path: Path, steps: list[float], message: str
) -> None:
    with plane.client() as c:
        dep, versions = deployed(c, tmp_path)
        with pytest.raises(InvalidArgument) as err:
            c.start_rollout(dep, versions[1], strategy="canary", steps=steps)
        assert err.value.reason == "INVALID_STEPS"
        assert err.value.message == message
        assert not c.get_deployment(dep).HasField("rollout")


@pytest.mark.parametrize(
    ("steps", "says"),
    [
        pytest.param("10,,50", "--steps '10,,50': item 2 is empty", id="inner"),
        pytest.param("10,50,", "--steps '10,50,': item 3 is empty", id="trailing"),
        pytest.param(",10", "--steps ',10': item 1 is empty", id="leading"),
        pytest.param(" , ", "--steps needs at least one percent", id="none"),
    ],
)
def test_steps_with_an_empty_item_are_a_usage_error(
    plane: RunningControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    steps: str,
    says: str,
) -> None:
    with plane.client() as c:
        dep, versions = deployed(c, tmp_path)
        cli = Cli(plane.address, capsys)
        code, _, err = cli.run(
            "rollout",
            "start",
            dep,
            "--candidate",
            str(versions[1]),
            "--strategy",
            "canary",
            "--steps",
            steps,
        )
        assert code == 2, err
        assert says in err
        assert not c.get_deployment(dep).HasField("rollout")
