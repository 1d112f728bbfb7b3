"""A guard that cannot be evaluated on the values a rollout meets (a division by a count that is
0) must neither hold a rollout for ever nor keep a failing candidate serving: such guards are
refused when set (they are tried with every number 0 as well as 1), and one stored before that
check lets the phase's defaults judge in its place. Through a real control plane (gRPC on
loopback, SQLite) fed synthetic window reports, and on :func:`guards.judge` directly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from controlplane.rollouts import guards
from controlplane.rollouts.service import SYSTEM
from controlplane.store import Store
from controlplane.store.deployment_tables import RolloutRow
from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import Sidecar, deployed, report_until
from tests.rollouts.harness import Plane, client_and_store

pytestmark = pytest.mark.timeout(120)

ERRORS = "candidate.error_rate <= champion.error_rate + 0.01"
#: Passes the check with every number 1, errs whenever the champion has no error.
INT_RATIO = "int(candidate.errors) / int(champion.errors) <= 2"
#: 0.0 / 0.0 when neither arm has an error: once NaN-like (false), which rolled back.
RATE_RATIO = "candidate.error_rate / champion.error_rate <= 2.0"
ENDED = (pb.ROLLOUT_STATE_PROMOTED, pb.ROLLOUT_STATE_ROLLED_BACK, pb.ROLLOUT_STATE_ABORTED)
DEFAULTS_NOTE = (
    "a guard that judges the candidate could not be evaluated (division by zero in "
    "int(candidate.errors) / int(champion.errors) (at line 1, column 1)), so the canary phase's "
    "defaults judge it"
)


@pytest.mark.parametrize(
    ("guard", "problem"),
    [
        (INT_RATIO, "division by zero in int(candidate.errors) / int(champion.errors)"),
        (RATE_RATIO, "0.0 / 0.0 is undefined in candidate.error_rate / champion.error_rate"),
        ("shadow.disagreements / shadow.pairs < 0.1", "0.0 / 0.0 is undefined"),
    ],
)
def test_a_guard_that_errs_when_every_number_is_0_is_refused_when_set(
    c: Client, tmp_path: Path, guard: str, problem: str
) -> None:
    dep, versions = deployed(c, tmp_path)
    for call in (
        lambda: c.start_rollout(dep, versions[1], guards=[guard]),
        lambda: c.update_deployment(dep, guards=[guard]),
    ):
        with pytest.raises(InvalidArgument) as err:
            call()
        assert err.value.reason == "INVALID_GUARD", err.value
        message = err.value.message
        assert "it cannot be evaluated when every field is 0" in message, message
        assert problem in message, message
        assert "candidate.errors <= 2.0 * champion.errors" in message, message
    assert not c.get_deployment(dep).rollout.id
    # Written as a product, or with what a ratio of zeros means, it is accepted.
    for accepted in (
        "candidate.errors <= 2.0 * champion.errors",
        f"champion.error_rate == 0.0 || {RATE_RATIO}",
    ):
        c.update_deployment(dep, guards=[accepted])


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[Plane]:
    """A client of a control plane of its own, and its store, to write guards it would
    refuse."""
    with client_and_store(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}") as plane:
        yield plane


def _canary_with_stored_guard(c: Client, store: Store, tmp_path: Path, guard: str) -> Any:
    """A canary (50%, then 100%) whose rollout guard is ``guard``, written past the check."""
    dep, versions = deployed(c, tmp_path)
    c.start_rollout(
        dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10, guards=[ERRORS]
    )
    with store.write(SYSTEM, "test") as tx:
        tx.session.exec(  # type: ignore[call-overload]
            update(RolloutRow).where(col(RolloutRow.deployment_id) == dep).values(guards=[guard])
        )
    assert list(c.get_deployment(dep).rollout.effective_guards) == [guard]
    return dep, versions


def test_a_stored_guard_that_errs_lets_the_defaults_roll_a_failing_candidate_back(
    stored: tuple[Client, Store], tmp_path: Path
) -> None:
    c, store = stored
    dep, versions = _canary_with_stored_guard(c, store, tmp_path, INT_RATIO)
    side = Sidecar(c, dep)
    # The candidate fails every request, the champion none: the guard divides by 0.
    side.report(champion=30, candidate=30, candidate_errors=30)
    d = c.get_deployment(dep)
    assert d.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, d.rollout.reason
    assert d.champion_version == versions[0]
    assert d.rollout.reason.startswith(f"guard failed: {ERRORS} (evaluated to false with ")
    assert DEFAULTS_NOTE in d.rollout.reason
    stood_in, *defaults = d.rollout.evidence.guards
    assert stood_in.expression == INT_RATIO and not stood_in.passed
    assert stood_in.error == (
        "not evaluated: division by zero in int(candidate.errors) / int(champion.errors) (at "
        "line 1, column 1); the canary phase's defaults judge the candidate in its place"
    )
    assert [(g.expression, g.passed, g.error) for g in defaults] == [
        (ERRORS, False, ""),
        (
            guards.DEFAULT_TRAFFIC_GUARDS[1],
            False,
            "skipped: candidate, champion has fewer than 100 requests in this window",
        ),
    ]


def test_a_stored_guard_that_errs_holds_no_step_of_a_healthy_candidate(
    stored: tuple[Client, Store], tmp_path: Path
) -> None:
    c, store = stored
    dep, versions = _canary_with_stored_guard(c, store, tmp_path, INT_RATIO)
    side = Sidecar(c, dep)
    time.sleep(0.2)
    report_until(side, lambda x: x.rollout.step == 1, champion=30, candidate=30)
    # At 100% the previous step's champion (no error) is the comparison: the guard still errs.
    d = report_until(side, lambda x: x.rollout.state in ENDED, candidate=30)
    assert d.rollout.state == pb.ROLLOUT_STATE_PROMOTED, d.rollout.reason
    assert d.champion_version == versions[1]
    assert (
        "every guard that applies passed over the step (2 of 3; the others could not be "
        "evaluated, the defaults judging in their place)"
    ) in d.rollout.reason
    assert DEFAULTS_NOTE in d.rollout.reason


# On guards.judge directly ---------------------------------------------------------------------

CHAMPION = {"requests": 100.0, "errors": 0.0, "error_rate": 0.0, "latency_p99": 0.01}
FAILING = {"requests": 100.0, "errors": 100.0, "error_rate": 1.0, "latency_p99": 0.01}


def test_the_defaults_stand_in_when_a_guard_judging_the_candidate_erred() -> None:
    values = {"champion": CHAMPION, "candidate": FAILING}
    judged = guards.judge([INT_RATIO], values, "canary", 20)
    assert judged.stood_in == {INT_RATIO}
    assert guards.first_failure(judged.results).expression == ERRORS  # type: ignore[union-attr]
    # Another guard judging the candidate was evaluated: it judges something else (latency),
    # so the defaults still stand in for the one that erred, and it judges beside them.
    latency = "candidate.latency_p99 <= 1.0"
    both = guards.judge([INT_RATIO, latency], values, "canary", 20)
    assert both.stood_in == {INT_RATIO} and both.note
    assert [g.expression for g in both.results][:2] == [INT_RATIO, latency]
    assert both.results[1].passed and not both.results[1].error
    assert guards.first_failure(both.results).expression == ERRORS  # type: ignore[union-attr]
    # The defaults set as guards already: nothing to add, and the one that erred holds nothing.
    set_too = guards.judge([INT_RATIO, *guards.DEFAULT_TRAFFIC_GUARDS], values, "canary", 20)
    assert set_too.stood_in == {INT_RATIO} and len(set_too.results) == 3
    assert guards.first_failure(set_too.results).expression == ERRORS  # type: ignore[union-attr]
    # Evaluated guards alone: nothing added.
    fine = guards.judge([latency, "candidate.errors <= 50.0"], values, "canary", 20)
    assert not fine.stood_in and not fine.note and len(fine.results) == 2
    # A guard that is skipped (too few requests, a value not there) is no error: nothing added.
    thin = guards.judge([INT_RATIO], values, "canary", 200)
    assert not thin.stood_in and [g.expression for g in thin.results] == [INT_RATIO]
    absent = guards.judge(["candidate.accuracy >= 0.9"], values, "canary", 20)
    assert not absent.stood_in and len(absent.results) == 1


def test_with_no_champion_the_absolute_bound_stands_in() -> None:
    """A guard on the candidate alone that errs, in a 100% step with no champion to compare
    with: the defaults (which read the champion) are skipped, the absolute bound judges."""
    errs = "int(candidate.errors) / int(candidate.errors - 100.0) < 1"
    judged = guards.judge([errs], {"candidate": FAILING}, "canary", 20, champion_requests=20)
    assert judged.stood_in == {errs}
    failure = guards.first_failure(judged.results)
    assert failure is not None and failure.expression == guards.NO_CHAMPION_GUARD
