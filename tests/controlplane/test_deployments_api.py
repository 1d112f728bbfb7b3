"""Deployments and rollouts through a real control plane: CRUD, every strategy walking to its
end with synthetic window reports, guard rollbacks, gates, the audit trail, and bad input for
every RPC. Also holds the helpers the other deployment tests use."""

from __future__ import annotations

import functools
import itertools
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelplane import Client
from modelplane.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ModelplaneError,
    NotFound,
)
from modelplane.testing import onnx_models
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

FAST: dict[str, Any] = {"step_duration": 0.3, "min_requests": 50}


def next_generation(states: queue.Queue[Any], generation: int, timeout: float = 10) -> Any:
    """The first pushed state at ``generation`` or later, skipping heartbeat repeats.

    How fast a change reaches a watcher is measured by ``bench/rollout.py``; tests on a busy
    CI machine only require that it arrives.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = states.get(timeout=max(0.01, deadline - time.monotonic()))
        if state.generation >= generation:
            return state


def register_versions(c: Client, folder: Path, count: int = 2, **kw: Any) -> tuple[str, list[int]]:
    """A new model with ``count`` versions of a small MLP (different seeds)."""
    model_id = unique()
    c.create_model(model_id)
    versions = []
    for seed in range(count):
        path = onnx_models.save(onnx_models.mlp(8, (8,), seed=seed), folder / f"m{seed}.onnx")
        versions.append(int(c.register_version(model_id, path, **kw).version))
    return model_id, versions


def deployed(c: Client, folder: Path, **kw: Any) -> tuple[str, list[int]]:
    """A deployment serving version 1 of a new model with 3 versions."""
    model_id, versions = register_versions(c, folder, 3)
    dep = unique("d")
    c.create_deployment(dep, model=model_id, champion_version=versions[0], **kw)
    return dep, versions


def latency(values: list[float] | np.ndarray) -> pb.Histogram:
    """A log-scale latency histogram (0.1 ms .. 10 s, 50 buckets) of ``values``."""
    low, high, n = 1e-4, 10.0, 50
    edges = np.logspace(np.log10(low), np.log10(high), n + 1)
    arr = np.asarray(values, dtype=np.float64)
    counts, _ = np.histogram(arr[(arr >= low) & (arr < high)], bins=edges)
    return pb.Histogram(
        low=low,
        high=high,
        log_scale=True,
        counts=[int(x) for x in counts],
        underflow=int((arr < low).sum()),
        overflow=int((arr >= high).sum()),
        sum=float(arr.sum()),
    )


def arm(name: str, version: int, requests: int, errors: int = 0, seconds: float = 0.002) -> Any:
    return pb.ArmSummary(
        arm=name,
        version=version,
        requests=requests,
        errors=errors,
        rows=requests,
        latency=latency(np.full(requests, seconds)),
    )


class Sidecar:
    """A fake sidecar replica that reports synthetic windows for the current desired state."""

    _ids = itertools.count(1)

    def __init__(self, c: Client, dep: str, replica: str = "") -> None:
        self.c = c
        self.dep = dep
        self.replica = replica or f"replica-{next(self._ids)}"
        self.sequence = 0

    def report(
        self,
        champion: int = 0,
        candidate: int = 0,
        *,
        candidate_errors: int = 0,
        champion_errors: int = 0,
        candidate_seconds: float = 0.002,
        shadow: Any = None,
        extra: list[Any] | None = None,
        unloaded: dict[int, str] | None = None,
    ) -> pb.ReportWindowResponse:
        """Report one window; ``unloaded`` (version → error) as a sidecar that could not load
        those versions says."""
        d = self.c.get_deployment(self.dep)
        self.sequence += 1
        arms = []
        if champion:
            arms.append(arm("champion", d.champion_version, champion, champion_errors))
        r = d.rollout
        active = r.state in (pb.ROLLOUT_STATE_RUNNING, pb.ROLLOUT_STATE_PAUSED)
        if candidate and active:
            arms.append(
                arm(
                    "candidate", r.candidate_version, candidate, candidate_errors, candidate_seconds
                )
            )
        request = pb.ReportWindowRequest(
            name=f"deployments/{self.dep}",
            replica=self.replica,
            sequence=self.sequence,
            generation=d.generation,
            rollout_id=r.id if active else "",
            arms=arms + list(extra or []),
            unloaded_versions=[
                pb.UnloadedVersion(version=v, error=e) for v, e in (unloaded or {}).items()
            ],
        )
        if shadow is not None:
            request.shadow.CopyFrom(shadow)
        return self.c._call(self.c.deployments.ReportWindow, request)


def wait_for(check: Callable[[], Any], what: str, seconds: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def report_until(
    side: Sidecar, done: Callable[[pb.Deployment], bool], seconds: float = 60, **counts: Any
) -> pb.Deployment:
    """Report the same window again and again until ``done(deployment)``."""

    def once() -> pb.Deployment | None:
        side.report(**counts)
        d = side.c.get_deployment(side.dep)
        return d if done(d) else None

    return wait_for(once, "the rollout", seconds)


def drive(sidecar: Sidecar, until: Callable[[pb.Deployment], bool], **kw: Any) -> pb.Deployment:
    """Report healthy windows until ``until`` holds for the deployment."""

    def step() -> pb.Deployment | None:
        sidecar.report(**{"champion": 100, "candidate": 100, **kw})
        d = sidecar.c.get_deployment(sidecar.dep)
        return d if until(d) else None

    return wait_for(step, "the rollout to move")


def state_of(d: pb.Deployment) -> str:
    return pb.RolloutState.Name(d.rollout.state)


@pytest.fixture
def cp(controlplane: RunningControlPlane) -> Iterator[RunningControlPlane]:
    yield controlplane


# CRUD -----------------------------------------------------------------------------------------


def test_create_get_list_update_delete(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client("alice") as c:
        model_id, versions = register_versions(c, tmp_path, 2)
        rid = "5f0c7b8e-1111-4222-8333-944455556666"
        asked: dict[str, Any] = dict(
            model=model_id,
            champion_version=versions[0],
            description="fraud scoring",
            labels={"team": "risk"},
            guards=["candidate.error_rate <= 0.05"],
            max_psi=0.3,
        )
        made = c.create_deployment("fraud", **asked, request_id=rid)
        assert made.name == "deployments/fraud" and made.model == f"models/{model_id}"
        assert made.champion_version == versions[0] and made.generation == 1
        assert made.created_by == "alice" and made.etag
        assert made.drift_thresholds.max_psi == 0.3 and made.drift_thresholds.min_rows == 200
        assert not made.drift_thresholds.HasField("max_drifted_share")
        assert made.drift_thresholds.cooldown.seconds == 600
        assert not made.HasField("rollout")
        again = c.create_deployment("fraud", **asked, request_id=rid)
        assert again.etag == made.etag
        with pytest.raises(InvalidArgument) as reused:
            c.create_deployment("fraud", **{**asked, "max_psi": 0.5}, request_id=rid)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        with pytest.raises(AlreadyExists) as dup:
            c.create_deployment("fraud", model=model_id, champion_version=versions[0])
        assert dup.value.reason == "DEPLOYMENT_EXISTS"
        c.create_deployment("fraud-b", model=model_id, champion_version=versions[1])
        names = [d.name for d in c.list_deployments(page_size=1)]
        assert {"deployments/fraud", "deployments/fraud-b"} <= set(names)
        updated = c.update_deployment(
            "fraud", etag=made.etag, description="new", guards=[], webhook_url="http://x.test/h"
        )
        assert updated.description == "new" and list(updated.guards) == []
        assert updated.retraining_hook.webhook_url == "http://x.test/h"
        assert updated.etag != made.etag and updated.generation == made.generation
        with pytest.raises(Aborted) as stale:
            c.update_deployment("fraud", etag=made.etag, description="again")
        assert stale.value.reason == "ETAG_MISMATCH"
        with pytest.raises(Aborted):
            c.delete_deployment("fraud", etag=made.etag)
        c.delete_deployment("fraud", etag=updated.etag)
        with pytest.raises(NotFound) as gone:
            c.get_deployment("fraud")
        assert gone.value.reason == "DEPLOYMENT_NOT_FOUND"
        audit = [e.action for e in c.audit_events(resource="deployments/fraud")]
        assert audit == ["CreateDeployment", "UpdateDeployment", "DeleteDeployment"]


def test_bad_input_for_deployment_rpcs(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        model_id, versions = register_versions(c, tmp_path, 2)
        c.archive_version(model_id, versions[1])

        def refused(exc: type[ModelplaneError], reason: str, call: Callable[[], Any]) -> str:
            with pytest.raises(exc) as err:
                call()
            assert err.value.reason == reason, err.value
            assert err.value.message
            return err.value.message

        create = c.create_deployment
        refused(
            InvalidArgument,
            "INVALID_NAME",
            lambda: create("Bad_Id", model=model_id, champion_version=1),
        )
        refused(NotFound, "MODEL_NOT_FOUND", lambda: create("d1", model="nope", champion_version=1))
        refused(
            NotFound, "VERSION_NOT_FOUND", lambda: create("d1", model=model_id, champion_version=9)
        )
        refused(
            InvalidArgument,
            "INVALID_VERSION",
            lambda: create("d1", model=model_id, champion_version=0),
        )
        msg = refused(
            FailedPrecondition,
            "VERSION_ARCHIVED",
            lambda: create("d1", model=model_id, champion_version=versions[1]),
        )
        assert "archived" in msg
        msg = refused(
            InvalidArgument,
            "INVALID_GUARD",
            lambda: create(
                "d1", model=model_id, champion_version=1, guards=["candidate.error_rate <="]
            ),
        )
        assert "syntax error" in msg
        refused(
            InvalidArgument,
            "INVALID_GUARD",
            lambda: create("d1", model=model_id, champion_version=1, guards=["metrics.auc > 1"]),
        )
        refused(
            InvalidArgument,
            "INVALID_DRIFT_THRESHOLDS",
            lambda: create("d1", model=model_id, champion_version=1, max_drifted_share=1.5),
        )
        refused(
            InvalidArgument,
            "INVALID_WEBHOOK_URL",
            lambda: create("d1", model=model_id, champion_version=1, webhook_url="ftp://x"),
        )
        refused(NotFound, "DEPLOYMENT_NOT_FOUND", lambda: c.get_deployment("missing"))
        refused(InvalidArgument, "INVALID_NAME", lambda: c.get_deployment("deployments/a/b"))
        refused(
            InvalidArgument, "INVALID_PAGE_SIZE", lambda: list(c.list_deployments(page_size=-1))
        )
        refused(
            NotFound,
            "DEPLOYMENT_NOT_FOUND",
            lambda: c.update_deployment("missing", description="x"),
        )
        c.create_deployment("d1", model=model_id, champion_version=1)
        refused(InvalidArgument, "INVALID_UPDATE_MASK", lambda: c.update_deployment("d1"))
        refused(
            InvalidArgument,
            "INVALID_GUARD",
            lambda: c.update_deployment("d1", guards=["champion.error_rate <"]),
        )
        refused(NotFound, "DEPLOYMENT_NOT_FOUND", lambda: c.delete_deployment("missing"))
        refused(NotFound, "DEPLOYMENT_NOT_FOUND", lambda: list(c.list_rollout_events("missing")))
        # Nothing half-written: only d1 exists.
        assert [d.name for d in c.list_deployments()] == ["deployments/d1"]


def test_bad_input_for_rollout_rpcs(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        start = c.start_rollout

        def refused(exc: type[ModelplaneError], reason: str, call: Callable[[], Any]) -> None:
            with pytest.raises(exc) as err:
                call()
            assert err.value.reason == reason, err.value

        refused(NotFound, "DEPLOYMENT_NOT_FOUND", lambda: start("missing", 2))
        refused(InvalidArgument, "INVALID_STRATEGY", lambda: start(dep, 2, strategy="yolo"))
        refused(InvalidArgument, "INVALID_CANDIDATE", lambda: start(dep, 0))
        refused(InvalidArgument, "CANDIDATE_IS_CHAMPION", lambda: start(dep, versions[0]))
        refused(NotFound, "VERSION_NOT_FOUND", lambda: start(dep, 42))
        refused(InvalidArgument, "INVALID_STEPS", lambda: start(dep, 2, steps=[50, 10]))
        refused(InvalidArgument, "INVALID_STEPS", lambda: start(dep, 2, steps=[10, 10]))
        refused(InvalidArgument, "INVALID_STEPS", lambda: start(dep, 2, steps=[0, 50]))
        refused(InvalidArgument, "INVALID_STEPS", lambda: start(dep, 2, steps=[50, 120]))
        refused(InvalidArgument, "INVALID_STEPS", lambda: start(dep, 2, strategy="ab", steps=[5]))
        refused(InvalidArgument, "INVALID_SPLIT", lambda: start(dep, 2, strategy="ab", split=150))
        refused(InvalidArgument, "INVALID_SPLIT", lambda: start(dep, 2, strategy="ab", split=-5))
        nan = float("nan")
        refused(InvalidArgument, "INVALID_SPLIT", lambda: start(dep, 2, strategy="ab", split=nan))
        refused(
            InvalidArgument,
            "INVALID_SHADOW_FRACTION",
            lambda: start(dep, 2, strategy="shadow", shadow_fraction=nan),
        )
        refused(InvalidArgument, "INVALID_DURATION", lambda: start(dep, 2, step_duration=nan))
        refused(
            InvalidArgument,
            "INVALID_SHADOW_FRACTION",
            lambda: start(dep, 2, strategy="shadow", shadow_fraction=1.5),
        )
        refused(
            InvalidArgument,
            "INVALID_SHADOW_FRACTION",
            lambda: start(dep, 2, strategy="blue_green", shadow_fraction=-0.1),
        )
        refused(InvalidArgument, "INVALID_DURATION", lambda: start(dep, 2, step_duration=-1))
        refused(InvalidArgument, "INVALID_MIN_REQUESTS", lambda: start(dep, 2, min_requests=-1))
        refused(InvalidArgument, "INVALID_GUARD", lambda: start(dep, 2, guards=["shadow.x >"]))
        for action in ("pause", "resume", "abort", "promote", "rollback"):
            act = getattr(c, f"{action}_rollout")
            refused(FailedPrecondition, "NO_ROLLOUT", functools.partial(act, dep))
        assert c.get_deployment(dep).generation == 1  # nothing was applied
        d = start(dep, versions[1], **FAST)
        assert state_of(d) == "ROLLOUT_STATE_RUNNING"
        refused(FailedPrecondition, "ROLLOUT_IN_PROGRESS", lambda: start(dep, versions[2]))
        refused(FailedPrecondition, "ROLLOUT_NOT_PAUSED", lambda: c.resume_rollout(dep))
        refused(Aborted, "ETAG_MISMATCH", lambda: c.pause_rollout(dep, etag="stale"))
        refused(FailedPrecondition, "ROLLOUT_IN_PROGRESS", lambda: c.delete_deployment(dep))
        paused = c.pause_rollout(dep, reason="look at the dashboards", etag=d.etag)
        assert state_of(paused) == "ROLLOUT_STATE_PAUSED"
        refused(FailedPrecondition, "ROLLOUT_NOT_RUNNING", lambda: c.pause_rollout(dep))
        c.abort_rollout(dep)
        for action in ("pause", "resume", "abort", "promote", "rollback"):
            act = getattr(c, f"{action}_rollout")
            reason = "ROLLOUT_NOT_PAUSED" if action == "resume" else "ROLLOUT_NOT_RUNNING"
            refused(FailedPrecondition, reason, functools.partial(act, dep))


def test_bad_window_reports(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, _ = deployed(c, tmp_path)

        def refused(reason: str, **kw: Any) -> None:
            args: dict[str, Any] = {"replica": "r1", "sequence": 1, **kw}
            with pytest.raises(InvalidArgument) as err:
                c.report_window(dep, **args)
            assert err.value.reason == reason, err.value

        refused("INVALID_REPORT", replica="")
        refused("INVALID_REPORT", sequence=-1)
        refused("INVALID_REPORT", arms=[arm("bystander", 1, 10)])
        refused("INVALID_REPORT", arms=[arm("champion", 1, 10), arm("champion", 1, 10)])
        refused("INVALID_REPORT", arms=[arm("champion", 1, 10, errors=11)])
        bad = arm("champion", 1, 10)
        bad.latency.high = bad.latency.low
        refused("INVALID_HISTOGRAM", arms=[bad])
        bad = arm("champion", 1, 10)
        bad.latency.counts[0] = -1
        refused("INVALID_HISTOGRAM", arms=[bad])
        with pytest.raises(NotFound):
            c.report_window("missing", replica="r1", sequence=1)
        first = c.report_window(dep, replica="r1", sequence=1, arms=[arm("champion", 1, 10)])
        assert first.accepted and first.generation == 1
        other = arm("champion", 1, 10)
        other.latency.high = 20.0
        refused("HISTOGRAM_LAYOUT_MISMATCH", replica="r2", arms=[other])
        repeat = c.report_window(dep, replica="r1", sequence=1, arms=[arm("champion", 1, 10)])
        assert not repeat.accepted
        # the refused r2 report was not stored: the same sequence is accepted once valid
        assert c.report_window(dep, replica="r2", sequence=1, arms=[arm("champion", 1, 5)]).accepted


# Strategies -------------------------------------------------------------------------------------


def test_canary_walks_its_steps_to_promoted(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client("alice") as c:
        dep, versions = deployed(c, tmp_path)
        d = c.start_rollout(dep, versions[1], strategy="canary", steps=[20, 60, 100], **FAST)
        r = d.rollout
        assert r.id and r.strategy == pb.ROLLOUT_STRATEGY_CANARY and r.step == 0
        assert r.candidate_percent == 20 and r.phase == pb.ROLLOUT_PHASE_CANARY
        assert r.started_by == "alice" and d.generation == 2
        assert list(r.effective_guards) == [
            "candidate.error_rate <= champion.error_rate + 0.01",
            "candidate.latency_p99 <= 1.5 * champion.latency_p99 + 0.005",
        ]
        side = Sidecar(c, dep)
        # Time alone does not advance a step without candidate requests.
        time.sleep(0.5)
        assert c.get_deployment(dep).rollout.step == 0
        done = drive(side, lambda x: x.rollout.state == pb.ROLLOUT_STATE_PROMOTED, candidate=30)
        # Every step was walked, in order: the events say so whatever the polling saw.
        walked = [
            (e.action, e.candidate_percent)
            for e in reversed(list(c.list_rollout_events(dep)))
            if e.action in ("started", "advanced", "promoted")
        ]
        assert walked == [
            ("started", 20.0),
            ("advanced", 60.0),
            ("advanced", 100.0),
            ("promoted", 0.0),
        ]
        assert done.champion_version == versions[1] and done.rollout.end_time.seconds
        assert done.rollout.candidate_percent == 0
        ev = done.rollout.evidence
        assert ev.candidate.requests > 0 and ev.replica_count == 1
        assert all(g.passed or g.error for g in ev.guards)
        events = list(c.list_rollout_events(dep))
        actions = [e.action for e in events]
        assert actions[0] == "promoted" and actions[-1] == "started"
        assert actions.count("advanced") == 2
        assert [e.candidate_percent for e in reversed(events)][:3] == [20, 60, 100]
        assert {e.actor for e in events} == {"alice", "modelplane"}
        audit = [(e.action, e.actor) for e in c.audit_events(resource=f"deployments/{dep}")]
        assert audit[1] == ("StartRollout", "alice")
        assert audit[-1] == ("PromoteRollout", "modelplane")
        assert c.get_deployment(dep).generation == 2 + 3


def test_violated_guard_rolls_back_within_one_window(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        before = c.start_rollout(dep, versions[1], step_duration=60, min_requests=10_000)
        side = Sidecar(c, dep)
        ok = side.report(champion=200, candidate=40)
        assert ok.accepted and ok.generation == before.generation
        # Too few candidate requests: the guard is skipped, not failed.
        side.report(champion=200, candidate=5, candidate_errors=5)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_RUNNING"
        # (A window's latency_p99 guard waits for 100 requests of each arm it reads.)
        assert all("fewer than" in g.error for g in d.rollout.evidence.guards)
        assert {g.error.split("fewer than ")[1].split()[0] for g in d.rollout.evidence.guards} == {
            "20",
            "100",
        }
        bad = side.report(champion=200, candidate=100, candidate_errors=30)
        d = c.get_deployment(dep)
        assert bad.generation == d.generation == before.generation + 1
        assert state_of(d) == "ROLLOUT_STATE_ROLLED_BACK"
        assert d.champion_version == versions[0] and d.rollout.candidate_percent == 0
        assert d.rollout.reason.startswith("guard failed: candidate.error_rate")
        failed = [g for g in d.rollout.evidence.guards if not g.passed and not g.error]
        assert [g.expression for g in failed] == [
            "candidate.error_rate <= champion.error_rate + 0.01"
        ]
        assert d.rollout.evidence.candidate.error_rate == pytest.approx(0.3)
        last = next(iter(c.list_rollout_events(dep)))
        assert last.action == "rolled_back" and last.actor == "modelplane"
        assert last.evidence.candidate.errors == 30
        audit = list(c.audit_events(resource=f"deployments/{dep}"))
        assert (audit[-1].action, audit[-1].actor) == ("RollbackRollout", "modelplane")


def test_guards_on_latency_missing_values_and_custom_rules(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path, guards=["candidate.accuracy >= 0.5"])
        d = c.start_rollout(
            dep,
            versions[1],
            guards=["candidate.latency_p99 <= 0.05"],
            step_duration=60,
            min_requests=10_000,
        )
        assert list(d.rollout.effective_guards) == [
            "candidate.accuracy >= 0.5",
            "candidate.latency_p99 <= 0.05",
        ]
        side = Sidecar(c, dep)
        side.report(champion=100, candidate=100, candidate_seconds=0.01)
        d = c.get_deployment(dep)
        accuracy, p99 = d.rollout.evidence.guards
        assert not accuracy.passed and "candidate.accuracy" in accuracy.error
        assert p99.passed and not p99.error
        assert state_of(d) == "ROLLOUT_STATE_RUNNING"
        side.report(champion=100, candidate=100, candidate_seconds=0.2)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_ROLLED_BACK"
        assert "candidate.latency_p99 <= 0.05" in d.rollout.reason


def test_a_windows_p99_over_few_requests_rolls_nothing_back(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    """Over 42 requests a window's p99 is its slowest request: a latency guard waits for 100
    requests of each arm it reads before it judges one window (the step's sum judges it as
    before), so one slow window of a healthy candidate does not roll it back."""
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        c.start_rollout(dep, versions[1], step_duration=60, min_requests=10_000)
        side = Sidecar(c, dep)
        side.report(champion=200, candidate=42, candidate_seconds=0.2)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_RUNNING", d.rollout.reason
        errors, p99 = d.rollout.evidence.guards
        assert errors.passed and not errors.error
        assert p99.error == "skipped: candidate has fewer than 100 requests in this window"
        side.report(champion=200, candidate=100, candidate_seconds=0.2)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_ROLLED_BACK"
        assert "candidate.latency_p99" in d.rollout.reason


def test_ab_and_shadow_end_by_promote_or_rollback(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        d = c.start_rollout(dep, versions[1], strategy="ab", step_duration=0.1)
        assert d.rollout.candidate_percent == 50 and d.rollout.phase == pb.ROLLOUT_PHASE_AB
        side = Sidecar(c, dep)
        for _ in range(3):
            side.report(champion=100, candidate=100)
        time.sleep(0.4)
        assert state_of(c.get_deployment(dep)) == "ROLLOUT_STATE_RUNNING"
        done = c.promote_rollout(dep, reason="B wins")
        assert state_of(done) == "ROLLOUT_STATE_PROMOTED" and done.champion_version == versions[1]
        assert done.rollout.reason == "B wins"

        d = c.start_rollout(dep, versions[2], strategy="shadow", shadow_fraction=0.5)
        r = d.rollout
        assert r.candidate_percent == 0 and r.shadow_fraction == 0.5
        assert r.phase == pb.ROLLOUT_PHASE_SHADOW
        assert list(r.effective_guards) == [
            "shadow.error_rate <= champion.error_rate + 0.01",
            "shadow.disagreement_rate <= 0.1",
        ]
        calm = pb.ShadowSummary(version=versions[2], pairs=100, disagreements=3, abs_diff_sum=1.0)
        side.report(champion=100, shadow=calm)
        d = c.get_deployment(dep)
        assert d.rollout.evidence.shadow.disagreement_rate == pytest.approx(0.03)
        assert all(g.passed for g in d.rollout.evidence.guards)
        rolled = c.rollback_rollout(dep)
        assert state_of(rolled) == "ROLLOUT_STATE_ROLLED_BACK"
        assert rolled.champion_version == versions[1]


def test_shadow_disagreement_rolls_back(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        c.start_rollout(dep, versions[1], strategy="shadow")
        side = Sidecar(c, dep)
        loud = pb.ShadowSummary(version=versions[1], pairs=100, disagreements=40)
        side.report(champion=100, shadow=loud)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_ROLLED_BACK"
        assert "shadow.disagreement_rate" in d.rollout.reason


def test_blue_green_shadow_switch_watch_promoted(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        d = c.start_rollout(dep, versions[1], strategy="blue_green", step_duration=0.3)
        assert d.rollout.phase == pb.ROLLOUT_PHASE_SHADOW and d.rollout.shadow_fraction == 1
        # Time alone moves nothing: the shadow phase has no evidence yet.
        time.sleep(0.8)
        held = c.get_deployment(dep)
        assert held.rollout.phase == pb.ROLLOUT_PHASE_SHADOW
        assert state_of(held) == "ROLLOUT_STATE_RUNNING"
        side = Sidecar(c, dep)
        calm = pb.ShadowSummary(version=versions[1], pairs=100, disagreements=2)
        phases = []

        def seen(x: pb.Deployment) -> bool:
            phases.append(x.rollout.phase)
            return x.rollout.phase != pb.ROLLOUT_PHASE_SHADOW

        drive(side, seen, candidate=0, shadow=calm)
        # The switch moves on time (the reconciler); the watch needs the candidate's evidence.
        wait_for(lambda: c.get_deployment(dep).rollout.phase == pb.ROLLOUT_PHASE_WATCH, "the watch")
        done = drive(
            side, lambda x: x.rollout.state == pb.ROLLOUT_STATE_PROMOTED, champion=0, candidate=50
        )
        assert done.champion_version == versions[1]
        assert "every guard passed over the phase" in done.rollout.reason
        actions = [(e.action, e.phase) for e in reversed(list(c.list_rollout_events(dep)))]
        assert actions == [
            ("started", pb.ROLLOUT_PHASE_SHADOW),
            ("advanced", pb.ROLLOUT_PHASE_SWITCH),
            ("advanced", pb.ROLLOUT_PHASE_WATCH),
            ("promoted", pb.ROLLOUT_PHASE_WATCH),
        ]
        events = list(c.list_rollout_events(dep))
        switch = [e for e in events if e.phase == pb.ROLLOUT_PHASE_SWITCH]
        assert switch[0].candidate_percent == 100
        shadow_end, promoted = switch[0].evidence, events[0].evidence
        assert shadow_end.shadow.pairs >= 100 and all(g.passed for g in shadow_end.guards)
        assert promoted.candidate.requests >= 50 and all(g.passed for g in promoted.guards)


def test_champion_reference_when_candidate_serves_everything(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=20)
        side = Sidecar(c, dep)
        drive(side, lambda x: x.rollout.candidate_percent == 100, champion=100, candidate=40)
        # At 100% the champion answers nothing; its last windows with traffic are compared.
        side.report(champion=0, candidate=100, candidate_errors=50)
        d = c.get_deployment(dep)
        assert state_of(d) == "ROLLOUT_STATE_ROLLED_BACK"
        assert d.champion_version == versions[0]


def test_pause_holds_and_resume_restarts_the_step(cp: RunningControlPlane, tmp_path: Path) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        d = c.start_rollout(dep, versions[1], step_duration=0.2, min_requests=10)
        paused = c.pause_rollout(dep, etag=d.etag)
        assert paused.generation == d.generation + 1
        side = Sidecar(c, dep)
        for _ in range(3):
            side.report(champion=50, candidate=50)
        time.sleep(0.5)
        held = c.get_deployment(dep)
        assert state_of(held) == "ROLLOUT_STATE_PAUSED" and held.rollout.step == 0
        # guards still roll a paused rollout back
        resumed = c.resume_rollout(dep)
        assert state_of(resumed) == "ROLLOUT_STATE_RUNNING"
        assert (
            resumed.rollout.phase_start_time.ToDatetime()
            >= held.rollout.phase_start_time.ToDatetime()
        )
        c.pause_rollout(dep)
        side.report(champion=100, candidate=100, candidate_errors=90)
        assert state_of(c.get_deployment(dep)) == "ROLLOUT_STATE_ROLLED_BACK"


def test_gate_required_when_a_policy_governs_the_deployment(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        c.create_policy(unique("p"), target=f"deployments/{dep}", rules=['labels.ok == "yes"'])
        with pytest.raises(FailedPrecondition) as refused:
            c.start_rollout(dep, versions[1])
        assert refused.value.reason == "GATE_FAILED"
        assert f"deployments/{dep}" in refused.value.message
        model_id = c.get_deployment(dep).model.split("/")[1]
        c.update_version(model_id, versions[1], labels={"ok": "yes"})
        assert c.evaluate_gate(model_id, versions[1], f"deployments/{dep}").passed
        assert state_of(c.start_rollout(dep, versions[1])) == "ROLLOUT_STATE_RUNNING"


def test_desired_state_watch_pushes_changes(cp: RunningControlPlane, tmp_path: Path) -> None:
    import queue
    import threading

    with cp.client() as c:
        dep, versions = deployed(c, tmp_path)
        got: queue.Queue[pb.DeploymentState] = queue.Queue()

        def watch() -> None:
            for s in c.watch_deployment(dep, replica="w1", timeout=30):
                got.put(s)

        threading.Thread(target=watch, daemon=True).start()
        first = got.get(timeout=10)
        assert first.name == f"deployments/{dep}" and first.generation == 1
        assert [v.version for v in first.versions] == [versions[0]]
        assert first.versions[0].artifact_sha256 and first.versions[0].artifact_size_bytes > 0
        assert first.candidate_version == 0 and first.report_interval.seconds == 2
        c.start_rollout(dep, versions[1], strategy="ab", split=30)
        nxt = next_generation(got, 2)
        assert nxt.generation == 2 and nxt.candidate_version == versions[1]
        assert nxt.candidate_percent == 30 and [v.version for v in nxt.versions] == versions[:2]
        assert nxt.rollout_state == pb.ROLLOUT_STATE_RUNNING and nxt.phase == pb.ROLLOUT_PHASE_AB
        Sidecar(c, dep).report(champion=100, candidate=100, candidate_errors=100)
        back = next_generation(got, 3)
        assert back.generation == 3 and back.candidate_percent == 0
        assert back.rollout_state == pb.ROLLOUT_STATE_ROLLED_BACK
        assert [v.version for v in back.versions] == [versions[0]]
