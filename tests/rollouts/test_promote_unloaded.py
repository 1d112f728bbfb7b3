"""A manual promotion is refused (CANDIDATE_UNLOADED) while a replica that still reports says it
cannot load the candidate, unless forced: through a real control plane (gRPC on loopback,
SQLite, windows every second, so a replica is stale after 3 s) fed synthetic window reports,
and through the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.cli import main
from modelplane.cli._output import EXIT_SERVER_ERROR
from modelplane.errors import FailedPrecondition
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_deployments_api import Sidecar, deployed

pytestmark = pytest.mark.timeout(120)

WHY = "artifact digest mismatch: expected sha256:ab12, got sha256:cd34"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[RunningControlPlane]:
    running = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", report_interval_seconds=1.0
    )
    yield running
    running.handle.stop(0)


def _held(c: Client, tmp_path: Path) -> tuple[str, int, Callable[[], object]]:
    """A canary of a new deployment's version 2, which replica pod-bad cannot load, and a
    function that has pod-bad say so again."""
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=60, min_requests=10)
    bad = Sidecar(c, dep, "pod-bad")
    Sidecar(c, dep, "pod-ok").report(champion=4, candidate=4)
    return dep, versions[1], lambda: bad.report(champion=4, unloaded={versions[1]: WHY})


def _promotions(c: Client, dep: str) -> list[str]:
    return [
        e.action
        for e in c.audit_events(resource=f"deployments/{dep}")
        if e.action == "PromoteRollout"
    ]


def test_promotion_is_refused_while_a_replica_cannot_load_the_candidate(
    cp: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cp.client() as c:
        dep, candidate, still_bad = _held(c, tmp_path)
        still_bad()
        before = c.get_deployment(dep)
        with pytest.raises(FailedPrecondition) as err:
            c.promote_rollout(dep, reason="looks fine")
        assert err.value.reason == "CANDIDATE_UNLOADED"
        assert err.value.metadata["replicas"] == "pod-bad"
        assert err.value.metadata["candidate_version"] == str(candidate)
        assert "pod-bad" in str(err.value) and WHY in str(err.value) and "force" in str(err.value)
        # Nothing moved and nothing was recorded.
        after = c.get_deployment(dep)
        assert after.etag == before.etag and after.generation == before.generation
        assert after.rollout.state == pb.ROLLOUT_STATE_RUNNING
        assert after.champion_version == before.champion_version
        assert _promotions(c, dep) == []

        # The CLI says the same and exits with the server-error code.
        argv = ["--server", cp.address, "rollout", "promote", dep]
        capsys.readouterr()
        still_bad()
        assert main(argv) == EXIT_SERVER_ERROR
        assert "CANDIDATE_UNLOADED" in capsys.readouterr().err

        # Forced, it promotes, and the rollout's event says it was forced.
        still_bad()
        assert main([*argv, "--force", "--reason", "hotfix"]) == 0
        done = c.get_deployment(dep)
        assert done.rollout.state == pb.ROLLOUT_STATE_PROMOTED
        assert done.champion_version == candidate
        assert _promotions(c, dep) == ["PromoteRollout"]
        event = next(e for e in c.list_rollout_events(dep) if e.action == "promoted")
        assert event.reason == "hotfix (forced while pod-bad could not load the candidate)"


def test_a_replica_that_stopped_reporting_holds_no_promotion(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    with cp.client() as c:
        dep, candidate, still_bad = _held(c, tmp_path)
        still_bad()
        with pytest.raises(FailedPrecondition):
            c.promote_rollout(dep)
        # pod-bad is gone (no report for three intervals): it adds nothing to the evidence.
        time.sleep(3.2)
        assert c.promote_rollout(dep).champion_version == candidate
