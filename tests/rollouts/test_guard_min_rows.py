"""Guards on an arm's drift statistics wait for the deployment's drift ``min_rows``, through a
real control plane (gRPC on loopback, SQLite and PostgreSQL) fed window reports whose drift
counts are drawn against the version's real baseline profile: over a few rows the PSI of
unchanged traffic reads far above any threshold, so a healthy canary of a low-traffic
deployment was rolled back on its first window."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controlplane.rollouts import guards
from modelplane import Client
from modelplane.profiles import BaselineProfile, NumericFeature
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.test_deployments_api import arm
from tests.controlplane.test_deployments_drift import FEATURES, _with_baseline
from tests.rollouts.harness import Plane, client_and_store
from tests.rollouts.test_drift_windows import _second_version

pytestmark = pytest.mark.timeout(120)

GUARD = "candidate.drift.max_psi <= 0.25"


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on each backend, and a store on its database."""
    with client_and_store(tmp_path, db_url) as both:
        yield both


class Replica:
    """One sidecar replica reporting windows of the current rollout: each arm's requests are
    single rows drawn from N(0, scale), counted against the arm's version's baseline bins."""

    def __init__(self, c: Client, name: str, profiles: dict[int, tuple[BaselineProfile, str]]):
        self.c = c
        self.name = name
        self.profiles = profiles
        self.sequence = 0
        self.rng = np.random.default_rng(7)

    def _arm(self, which: str, version: int, rows: int, scale: float) -> Any:
        profile, sha = self.profiles[version]
        summary = pb.DriftSummary(baseline_sha256=sha, rows=rows)
        for feature_name in FEATURES:
            feature = profile.feature(feature_name)
            assert isinstance(feature, NumericFeature)
            values = self.rng.normal(0, scale, rows)
            counts = np.bincount(
                np.searchsorted(feature.edges, values, side="right"),
                minlength=len(feature.edges) + 1,
            )
            summary.features.append(
                pb.FeatureCounts(name=feature_name, counts=[int(x) for x in counts])
            )
        out = arm(which, version, rows)
        out.drift.CopyFrom(summary)
        return out

    def report(self, rows: int, scale: float = 1.0) -> pb.Deployment:
        """One window with ``rows`` champion and ``rows`` candidate requests; the deployment
        after it."""
        d = self.c.get_deployment(self.name)
        self.sequence += 1
        self.c._call(
            self.c.deployments.ReportWindow,
            pb.ReportWindowRequest(
                name=f"deployments/{self.name}",
                replica="r1",
                sequence=self.sequence,
                generation=d.generation,
                rollout_id=d.rollout.id,
                arms=[
                    self._arm("champion", d.rollout.champion_version, rows, scale),
                    self._arm("candidate", d.rollout.candidate_version, rows, scale),
                ],
            ),
        )
        return self.c.get_deployment(self.name)


def _drift_cells(d: pb.Deployment) -> dict[str, list[str]]:
    """The drifted share and max PSI cells of each arm in ``rollout status``'s table."""
    from modelplane.cli.rollout import status, status_tables

    (arms,) = [rows for title, _, rows in status_tables(d, status(d)) if "window" in title]
    return {row[0]: row[8:10] for row in arms}


def _guard(d: pb.Deployment) -> pb.GuardResult:
    return next(g for g in d.rollout.evidence.guards if g.expression == GUARD)


def _profiles(c: Client, model_id: str, folder: Path, *versions: int) -> dict[int, Any]:
    out = {}
    for v in versions:
        sha = c.get_version(model_id, v).baseline.sha256
        path = folder / f"profile-{v}.json"
        c.download_blob(sha, path)
        out[v] = (BaselineProfile.from_dict(json.loads(path.read_bytes())), sha)
    return out


def test_drift_guards_wait_for_the_deployments_min_rows(plane: Plane, tmp_path: Path) -> None:
    c, _ = plane
    model_id, v1, _ = _with_baseline(c, tmp_path)
    v2 = _second_version(c, model_id, tmp_path)
    name = unique("d")
    # No drift thresholds set: min_rows is the default, 200.
    c.create_deployment(name, model=model_id, champion_version=v1)
    started = time.monotonic()  # no later than the step's start
    c.start_rollout(name, v2, steps=[50], step_duration=1, min_requests=20, guards=[GUARD])
    side = Replica(c, name, _profiles(c, model_id, tmp_path, v1, v2))

    # Unchanged traffic, 20 rows a window: its PSI reads far above 0.25, but no window and
    # no step of fewer than 200 drift rows judges it.
    d = side.report(20)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert d.rollout.evidence.candidate.drift.max_psi > 0.25
    assert _guard(d).error == (
        "skipped: candidate has fewer than 200 drift rows in this window (the deployment's "
        "drift min_rows), too few to judge its drift"
    )
    # rollout status leaves those drift cells empty: they judge nothing.
    assert _drift_cells(d) == {"champion": ["", ""], "candidate": ["", ""]}
    for _ in range(7):
        d = side.report(20)
        assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
        error = _guard(d).error
        # On a loaded machine the step's second may pass within these reports: from then on
        # the step is judged (and held, with too few rows).
        late = time.monotonic() - started > 0.8
        assert "fewer than 200 drift rows in this window" in error or (
            late and "fewer than 200 drift rows in this step" in error
        ), error
    # Once the step has lasted its second (and counted its requests), the report judges it
    # over the step's 180 rows: held, not promoted.
    time.sleep(1.2)
    d = side.report(20)
    held = _guard(d)
    assert "fewer than 200 drift rows in this step" in held.error, held
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING and d.rollout.step == 0

    # With 200 rows over the step, it is judged there: unchanged traffic passes.
    d = side.report(20)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert d.champion_version == v2
    assert "every guard passed over the step" in d.rollout.reason

    # Traffic scaled by 3 under a deployment that waits for 300 rows: judged only once a window
    # holds that many, and then rolled back.
    c.update_deployment(name, drift_thresholds={"min_rows": 300})
    c.start_rollout(name, v1, steps=[50], step_duration=3600, min_requests=10**6, guards=[GUARD])
    d = side.report(250, scale=3.0)
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING, d.rollout.reason
    assert d.rollout.evidence.candidate.drift.max_psi > 0.25
    assert "fewer than 300 drift rows in this window" in _guard(d).error
    d = side.report(300, scale=3.0)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK
    shown = _drift_cells(d)["candidate"]
    assert float(shown[1]) == pytest.approx(d.rollout.evidence.candidate.drift.max_psi, rel=1e-3)
    assert f"guard failed: {GUARD}" in d.rollout.reason
    assert d.champion_version == v2


def test_a_guard_on_drift_rows_alone_is_not_held() -> None:
    """``drift.rows`` is a count, not a statistic over the rows: it is judged on any window,
    while a guard reading ``max_psi`` or ``drifted_share`` waits for the minimum."""
    values = {"candidate": {"requests": 50, "drift": {"rows": 50, "max_psi": 2.3}}}
    rows, psi, share = guards.evaluate(
        [
            "candidate.drift.rows >= 10.0",
            "candidate.drift.max_psi <= 0.25",
            "candidate.drift.drifted_share <= 0.5",
        ],
        values,
        20,
        drift_min_rows=100,
    )
    assert rows.passed and not rows.error
    assert psi.error.startswith("skipped: candidate has fewer than 100 drift rows")
    assert share.error.startswith("skipped: candidate has fewer than 100 drift rows")
    values["candidate"]["drift"]["rows"] = 100
    (psi,) = guards.evaluate(["candidate.drift.max_psi <= 0.25"], values, 20, drift_min_rows=100)
    assert psi.failed
