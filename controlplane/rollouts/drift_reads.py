"""Guards that read the drift of a version no drift is measured for.

A version registered without a training dataset has no baseline profile, so its sidecars never
report drift for it. A guard that reads that arm's ``drift`` without guarding the read
(``!has(candidate.drift) || ...``) is skipped on every window: it never rolls a rollout back,
and a step or phase it must pass waits for ever without saying why. Such guards are refused
where they would come into force: when a rollout starts (the deployment's guards and the
rollout's) and when a deployment with a rollout in progress gets new guards. An arm the
rollout's strategy never has (the candidate of a shadow rollout, which answers no traffic) is
not judged by any guard, so reading its drift is no such guard.
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.domain.deployments import SHADOW
from controlplane.rollouts.guards import unmeasurable_drift
from controlplane.services.versions import require_version
from controlplane.store import Tx
from modelplane.errors import FailedPrecondition

#: Each list of guards: (the field callers set it by, what a message calls one, how a person
#: changes it).
DEPLOYMENT_GUARDS = ("guards", "deployment guard", "update the deployment's guards")
ROLLOUT_GUARDS = ("rollout.guards", "rollout guard", "start the rollout without it")


def require_drift_measured(
    tx: Tx,
    model_id: str,
    strategy: str,
    champion_version: int,
    candidate_version: int,
    guard_lists: Sequence[tuple[tuple[str, str, str], Sequence[str]]],
) -> None:
    """FAILED_PRECONDITION (NO_BASELINE_PROFILE) when a guard of ``guard_lists`` (each
    ``(DEPLOYMENT_GUARDS or ROLLOUT_GUARDS, guards)``) reads, unguarded, the drift of an arm of
    a ``strategy`` rollout of ``model_id`` whose version has no baseline profile."""
    arms = {"champion": champion_version}
    if strategy != SHADOW:
        arms["candidate"] = candidate_version
    missing = {
        arm: number
        for arm, number in arms.items()
        if require_version(tx, model_id, number).baseline is None
    }
    if not missing:
        return
    for (field, label, change), guards in guard_lists:
        stuck = unmeasurable_drift(guards, frozenset(missing))
        if not stuck:
            continue
        index, expression, read = stuck[0]
        whose = " and ".join(f"the {arm}, version {missing[arm]}," for arm in read)
        raise FailedPrecondition(
            f"{label} {index} {expression[:200]!r} reads the drift of {whose} which has no "
            "baseline profile (registered without a training dataset): its drift is never "
            "measured, so the guard could never be evaluated; it would never roll the rollout "
            "back, and a step or phase it must pass would wait for ever. Roll out a version "
            f"registered with a training dataset, {change}, or guard the read "
            f"(!has({read[0]}.drift) || ...)",
            reason="NO_BASELINE_PROFILE",
            metadata={"field": field, "rule_index": str(index)},
        )
