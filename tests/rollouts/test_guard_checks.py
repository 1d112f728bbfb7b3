"""Guards are checked when they are set, through a real control plane (gRPC on loopback,
SQLite): a guard reading a field the guard variables do not have (a misspelling, which would be
skipped on every window and, replacing the defaults, would leave a failing candidate running),
or one that cannot yield a bool (which would hold a step for ever), is refused with
INVALID_GUARD by StartRollout, CreateDeployment and UpdateDeployment; every documented field
is accepted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.test_deployments_api import Sidecar, deployed

pytestmark = pytest.mark.timeout(120)

MISSPELLED = {
    "candidate.eror_rate <= 0.01": "candidate has no field 'eror_rate' (did you mean "
    "candidate.error_rate?)",
    "champion.latency_p95 > 0.0": "champion has no field 'latency_p95'",
    "candidate.drift.max_ps < 0.2": "candidate.drift has no field 'max_ps' (did you mean "
    "candidate.drift.max_psi?)",
    "shadow.requests > 10.0": "shadow has no field 'requests'",
    "candidate.error_rate.value < 0.1": "candidate.error_rate is a number; it has no field",
    "candidate['eror_rate'] < 0.1": "candidate has no field 'eror_rate'",
    "has(candidate.acuracy) && candidate.acuracy > 0.9": "no field 'acuracy'",
}
NOT_BOOL = {
    "1": "it yielded a int",
    "candidate.error_rate": "it yielded a double",
    "candidate.error_rate + champion.error_rate": "the rule must yield a bool",
    "candidate.drift < 1.0": "no operator relation_lt applied to '(map, double)'",
    "candidate.error_rate < 'x'": "type error",
}
ACCEPTED = [
    "candidate.error_rate <= champion.error_rate + 0.01",
    "candidate.latency_p99 <= 1.5 * champion.latency_p99 + 0.005",
    "candidate.latency_p50 < 0.1 && candidate.latency_mean < 0.1",
    "candidate.requests >= candidate.errors && candidate.rows >= 0.0 && candidate.version > 0.0",
    "!has(candidate.accuracy) || candidate.accuracy >= champion.accuracy - 0.02",
    "candidate.labeled >= candidate.correct",
    # These versions have no baseline profile: a drift read must be guarded (see below).
    "!has(candidate.drift) || candidate.drift.max_psi < 0.2 && candidate.drift.drifted_share < 0.5",
    "!has(champion.drift) || champion.drift.rows >= 0.0",
    "shadow.error_rate <= champion.error_rate + 0.01 && shadow.disagreement_rate <= 0.1",
    "shadow.mean_abs_diff < 0.5 && shadow.ks_statistic < 0.3",
    "shadow.pairs >= shadow.disagreements",
    "shadow.errors + shadow.dropped >= 0.0 && shadow.version > 0.0",
    "candidate['error_rate'] <= 0.05",
]


def _refused(call: Callable[[], Any], expected: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        call()
    assert err.value.reason == "INVALID_GUARD", err.value
    assert expected in err.value.message, err.value.message
    return err.value


@pytest.mark.parametrize("guard", list(MISSPELLED) + list(NOT_BOOL))
def test_guards_that_could_never_pass_are_refused(c: Client, tmp_path: Path, guard: str) -> None:
    expected = MISSPELLED.get(guard) or NOT_BOOL[guard]
    dep, versions = deployed(c, tmp_path)
    error = _refused(lambda: c.start_rollout(dep, versions[1], guards=[guard]), expected)
    assert error.metadata["field"] == "rollout.guards" and error.metadata["rule_index"] == "0"
    assert guard in error.message
    _refused(lambda: c.update_deployment(dep, guards=[ACCEPTED[0], guard]), expected)
    model = c.get_deployment(dep).model.split("/")[-1]
    _refused(
        lambda: c.create_deployment(unique("d"), model=model, champion_version=1, guards=[guard]),
        expected,
    )
    # Nothing was stored: the deployment keeps no guards and has no rollout.
    d = c.get_deployment(dep)
    assert list(d.guards) == [] and not d.HasField("rollout")


def test_every_documented_field_is_accepted(c: Client, tmp_path: Path) -> None:
    dep, versions = deployed(c, tmp_path, guards=ACCEPTED[:3])
    d = c.start_rollout(dep, versions[1], strategy="ab", guards=ACCEPTED[3:])
    assert list(d.rollout.effective_guards) == ACCEPTED


def test_a_misspelled_guard_can_no_longer_replace_the_default_rollback(
    c: Client, tmp_path: Path
) -> None:
    """With the misspelled guard accepted, a candidate failing every request kept running."""
    dep, versions = deployed(c, tmp_path)
    _refused(
        lambda: c.start_rollout(
            dep, versions[1], strategy="ab", guards=["candidate.eror_rate <= 0.01"]
        ),
        "did you mean candidate.error_rate?",
    )
    c.start_rollout(dep, versions[1], strategy="ab", guards=["candidate.error_rate <= 0.01"])
    side = Sidecar(c, dep)
    for _ in range(3):
        side.report(champion=100, candidate=100, candidate_errors=100)
    assert c.get_deployment(dep).rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK


@pytest.mark.parametrize(
    ("guard", "arm"),
    [("candidate.drift.max_psi <= 0.3", "candidate"), ("champion.drift.rows >= 0.0", "champion")],
)
def test_a_drift_guard_on_a_version_without_a_baseline_is_refused(
    c: Client, tmp_path: Path, guard: str, arm: str
) -> None:
    """No drift is measured for a version registered without a training dataset: an unguarded
    guard on its drift would be skipped on every window and hold the rollout for ever."""
    from modelplane.errors import FailedPrecondition

    dep, versions = deployed(c, tmp_path)
    with pytest.raises(FailedPrecondition) as refused:
        c.start_rollout(dep, versions[1], steps=[50], guards=[guard])
    assert refused.value.reason == "NO_BASELINE_PROFILE"
    number = versions[1] if arm == "candidate" else versions[0]
    assert f"the {arm}, version {number}," in refused.value.message
    assert f"!has({arm}.drift) ||" in refused.value.message
    assert c.get_deployment(dep).rollout.id == ""  # nothing started
    # Guarded, the read is accepted.
    c.start_rollout(dep, versions[1], steps=[50], guards=[f"!has({arm}.drift) || {guard}"])


def test_a_deployment_guard_on_drift_without_a_baseline_refuses_the_rollout(
    c: Client, tmp_path: Path
) -> None:
    """The deployment's guards come into force with every rollout: one that reads the drift
    of a version without a baseline holds the rollout as a rollout guard would."""
    from modelplane.errors import FailedPrecondition

    guard = "candidate.drift.max_psi <= 0.3"
    dep, versions = deployed(c, tmp_path, guards=["candidate.error_rate <= 0.05", guard])
    with pytest.raises(FailedPrecondition) as refused:
        c.start_rollout(dep, versions[1], steps=[50])
    error = refused.value
    assert error.reason == "NO_BASELINE_PROFILE"
    assert (error.metadata["field"], error.metadata["rule_index"]) == ("guards", "1")
    assert f"deployment guard 1 '{guard}'" in error.message
    assert f"the candidate, version {versions[1]}," in error.message
    assert "update the deployment's guards" in error.message
    assert c.get_deployment(dep).rollout.id == ""  # nothing started
    c.update_deployment(dep, guards=[f"!has(candidate.drift) || {guard}"])
    assert c.start_rollout(dep, versions[1], steps=[50]).rollout.state == (pb.ROLLOUT_STATE_RUNNING)


def test_new_deployment_guards_on_drift_without_a_baseline_are_refused_mid_rollout(
    c: Client, tmp_path: Path
) -> None:
    """New deployment guards apply at once to the rollout in progress; the deployment keeps
    its guards when they are refused. Without a rollout the same guards are taken: the check
    is made when a rollout starts."""
    from modelplane.errors import FailedPrecondition

    dep, versions = deployed(c, tmp_path)
    c.start_rollout(dep, versions[1], steps=[50])
    before = c.get_deployment(dep)
    with pytest.raises(FailedPrecondition) as refused:
        c.update_deployment(dep, guards=["champion.drift.rows >= 0.0"])
    assert refused.value.reason == "NO_BASELINE_PROFILE"
    assert f"the champion, version {versions[0]}," in refused.value.message
    after = c.get_deployment(dep)
    assert list(after.guards) == [] and after.etag == before.etag
    c.abort_rollout(dep)
    assert list(c.update_deployment(dep, guards=["champion.drift.rows >= 0.0"]).guards) == [
        "champion.drift.rows >= 0.0"
    ]


def test_a_shadow_rollout_takes_guards_on_its_candidates_drift_but_not_the_champions(
    c: Client, tmp_path: Path
) -> None:
    """A shadow candidate answers no traffic: no guard judges its arm, so reading its drift
    holds nothing and is taken; the champion serves, and reading its drift is refused."""
    from modelplane.errors import FailedPrecondition

    reads_candidate = "candidate.drift.max_psi <= 0.3"
    dep, versions = deployed(c, tmp_path, guards=[reads_candidate])
    d = c.start_rollout(dep, versions[1], strategy="shadow", guards=[reads_candidate])
    assert d.rollout.state == pb.ROLLOUT_STATE_RUNNING
    assert list(c.update_deployment(dep, guards=[reads_candidate]).guards) == [reads_candidate]
    with pytest.raises(FailedPrecondition) as refused:
        c.update_deployment(dep, guards=["champion.drift.max_psi <= 0.3"])
    assert refused.value.reason == "NO_BASELINE_PROFILE"
    assert "would never roll the rollout back" in refused.value.message
    assert list(c.get_deployment(dep).guards) == [reads_candidate]
