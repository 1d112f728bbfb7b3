"""Drift judged in the report that rolls a rollout back, through a real control plane (gRPC on
loopback, SQLite and PostgreSQL): the drift event and its payload see the deployment as the
report left it, the rollout no longer in progress, and the champion's drift window starts
afresh under no rollout, as it does whenever a rollout ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from controlplane.store.deployment_tables import DriftWindowRow
from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.test_deployments_api import arm, wait_for
from tests.controlplane.test_deployments_drift import (  # noqa: F401
    Hook,
    _drift_arm,
    _with_baseline,
    webhook,
)
from tests.rollouts.harness import Plane, client_and_store
from tests.rollouts.test_drift_windows import _second_version

pytestmark = pytest.mark.timeout(120)

MIN_ROWS = 200


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on each backend, and a store on its database."""
    with client_and_store(tmp_path, db_url) as both:
        yield both


def _rolling_out(c: Client, folder: Path, **thresholds: Any) -> tuple[str, int, int, Any, str]:
    """A deployment with drift thresholds and a canary in progress that holds until a guard
    fails: (deployment, champion, candidate, baseline profile, baseline digest)."""
    model_id, v1, profile = _with_baseline(c, folder)
    sha = c.get_version(model_id, v1).baseline.sha256
    v2 = _second_version(c, model_id, folder)
    name = unique("d")
    c.create_deployment(
        name, model=model_id, champion_version=v1, max_psi=0.25, min_rows=MIN_ROWS, **thresholds
    )
    c.start_rollout(name, v2, steps=[10], step_duration=3600, min_requests=10**6)
    return name, v1, v2, profile, sha


def _report_failing_candidate(c: Client, name: str, champion: Any, v2: int) -> None:
    """One window under the rollout: ``champion`` and a candidate failing half its requests,
    which rolls the rollout back."""
    d = c.get_deployment(name)
    c._call(
        c.deployments.ReportWindow,
        pb.ReportWindowRequest(
            name=f"deployments/{name}",
            replica="r1",
            sequence=1,
            generation=d.generation,
            rollout_id=d.rollout.id,
            arms=[champion, arm("candidate", v2, 50, errors=25)],
        ),
    )


def test_a_drift_event_in_the_report_that_rolls_back_names_no_rollout_in_progress(
    plane: Plane,
    tmp_path: Path,
    webhook: str,  # noqa: F811
) -> None:
    c, _ = plane
    name, v1, v2, profile, sha = _rolling_out(c, tmp_path, webhook_url=webhook)
    drifted = _drift_arm(v1, profile, sha, 1.5, MIN_ROWS + 100)  # judged in this report
    _report_failing_candidate(c, name, drifted, v2)
    newest_first = list(c.list_rollout_events(name))
    assert [e.action for e in newest_first] == ["drift", "rolled_back", "started"]
    event = newest_first[0]
    assert event.rollout_id == ""
    assert event.state == pb.ROLLOUT_STATE_UNSPECIFIED and event.candidate_percent == 0
    payload = wait_for(lambda: Hook.received and Hook.received[0], "the webhook")
    assert payload["rollout_id"] == ""
    d = c.get_deployment(name)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK and d.champion_version == v1


def test_the_report_that_rolls_back_opens_the_next_window_under_no_rollout(
    plane: Plane, tmp_path: Path
) -> None:
    c, store = plane
    name, v1, v2, profile, sha = _rolling_out(c, tmp_path)
    calm = _drift_arm(v1, profile, sha, 0.0, MIN_ROWS // 2)  # too few rows to judge
    _report_failing_candidate(c, name, calm, v2)
    assert c.get_deployment(name).rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK
    with store.read() as tx:
        q = select(DriftWindowRow).where(DriftWindowRow.deployment_id == name)
        windows = [(w.arm, w.version, w.rollout_id, w.rows) for w in tx.session.exec(q)]
    assert windows == [("champion", v1, "", MIN_ROWS // 2)]
