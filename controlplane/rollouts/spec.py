"""Checking a requested rollout and filling in its defaults.

Zero (or empty) means "the default" for every setting, as proto3 sends unset fields:
canary steps 10, 50, 100; A/B split 50; shadow fraction 1; step duration 60 s; 100 candidate
requests per canary step. Shares are refused where sidecars would route nothing: sidecars
split traffic in 10,000 buckets, so a step, split or shadow fraction must give each arm at
least one (0.01%), and each canary step must route more than the one before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from controlplane.domain.deployments import AB, BLUE_GREEN, CANARY, SHADOW, STRATEGIES, RolloutSpec
from controlplane.rollouts.guards import check_guards
from modelplane.errors import InvalidArgument

DEFAULT_STEPS = (10.0, 50.0, 100.0)
DEFAULT_SPLIT = 50.0
DEFAULT_SHADOW_FRACTION = 1.0
DEFAULT_STEP_SECONDS = 60.0
DEFAULT_MIN_REQUESTS = 100
MAX_STEPS = 20
MAX_STEP_SECONDS = 7 * 24 * 3600.0
#: Sidecars route by hashing each key to one of this many buckets and give the candidate
#: ``round(percent * BUCKETS / 100)`` of them, so a share smaller than one bucket (0.01%)
#: routes nothing and a rollout waiting for its requests would never move.
BUCKETS = 10_000


def _buckets(percent: float) -> int:
    """How many routing buckets a sidecar gives ``percent`` percent of traffic."""
    return round(percent * (BUCKETS // 100))


def _bad(message: str, reason: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, metadata={"field": field})


def _steps(strategy: str, steps: Sequence[float]) -> tuple[float, ...]:
    if strategy != CANARY:
        if steps:
            raise _bad(
                f"steps apply to canary rollouts only, not {strategy}",
                "INVALID_STEPS",
                "rollout.steps",
            )
        return ()
    values = tuple(float(s) for s in steps) or DEFAULT_STEPS
    if len(values) > MAX_STEPS:
        raise _bad(f"at most {MAX_STEPS} steps are allowed", "INVALID_STEPS", "rollout.steps")
    for i, value in enumerate(values):
        if not (math.isfinite(value) and 0 < value <= 100):
            raise _bad(
                f"step {i} is {value:g}%: each step must be a percent in (0, 100]",
                "INVALID_STEPS",
                "rollout.steps",
            )
        if _buckets(value) < 1:
            raise _bad(
                f"step {i} is {value:g}%: below 0.01% a step routes no traffic to the "
                "candidate (sidecars split traffic in steps of 0.01%)",
                "INVALID_STEPS",
                "rollout.steps",
            )
        if i and value <= values[i - 1]:
            raise _bad(
                f"steps must ascend: step {i} ({value:g}%) is not above step {i - 1} "
                f"({values[i - 1]:g}%)",
                "INVALID_STEPS",
                "rollout.steps",
            )
        if i and _buckets(value) <= _buckets(values[i - 1]):
            raise _bad(
                f"step {i} ({value:g}%) routes the same traffic as step {i - 1} "
                f"({values[i - 1]:g}%): steps must ascend by at least 0.01%",
                "INVALID_STEPS",
                "rollout.steps",
            )
    return values


def _split(strategy: str, split: float) -> float:
    if strategy != AB:
        if split:
            raise _bad(
                f"split applies to A/B rollouts only, not {strategy}",
                "INVALID_SPLIT",
                "rollout.split",
            )
        return 0.0
    value = float(split) or DEFAULT_SPLIT
    if not (math.isfinite(value) and 0 < value < 100):
        raise _bad(
            f"split is {value:g}%: it must be a percent in (0, 100)",
            "INVALID_SPLIT",
            "rollout.split",
        )
    if not 1 <= _buckets(value) < BUCKETS:
        raise _bad(
            f"split is {value:g}%: it must be between 0.01% and 99.99%, or one arm gets no "
            "traffic (sidecars split traffic in steps of 0.01%)",
            "INVALID_SPLIT",
            "rollout.split",
        )
    return value


def _fraction(strategy: str, fraction: float) -> float:
    if strategy not in (SHADOW, BLUE_GREEN):
        if fraction:
            raise _bad(
                f"shadow_fraction applies to shadow and blue/green rollouts only, not {strategy}",
                "INVALID_SHADOW_FRACTION",
                "rollout.shadow_fraction",
            )
        return 0.0
    value = float(fraction) or DEFAULT_SHADOW_FRACTION
    if not (math.isfinite(value) and 0 < value <= 1):
        raise _bad(
            f"shadow_fraction is {value:g}: it must be in (0, 1]",
            "INVALID_SHADOW_FRACTION",
            "rollout.shadow_fraction",
        )
    if round(value * BUCKETS) < 1:
        raise _bad(
            f"shadow_fraction is {value:g}: below 0.0001 (0.01%) no request is copied to the "
            "shadow (sidecars sample in steps of 0.01%)",
            "INVALID_SHADOW_FRACTION",
            "rollout.shadow_fraction",
        )
    return value


def build_spec(
    *,
    candidate_version: int,
    strategy: str,
    steps: Sequence[float] = (),
    split: float = 0.0,
    shadow_fraction: float = 0.0,
    step_duration_seconds: float = 0.0,
    min_requests: int = 0,
    guards: Sequence[str] = (),
) -> RolloutSpec:
    """A checked :class:`RolloutSpec` with defaults; INVALID_ARGUMENT naming the bad field."""
    if strategy not in STRATEGIES:
        raise _bad(
            f"strategy {strategy or '(unset)'!r} is invalid: use one of {', '.join(STRATEGIES)}",
            "INVALID_STRATEGY",
            "rollout.strategy",
        )
    if candidate_version <= 0:
        raise _bad(
            "candidate_version must name a version (a positive number)",
            "INVALID_CANDIDATE",
            "rollout.candidate_version",
        )
    seconds = float(step_duration_seconds)
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_STEP_SECONDS:
        raise _bad(
            f"step_duration must be between 0 and {MAX_STEP_SECONDS:g} seconds, got {seconds:g}",
            "INVALID_DURATION",
            "rollout.step_duration",
        )
    if min_requests < 0:
        raise _bad(
            f"min_requests must not be negative, got {min_requests}",
            "INVALID_MIN_REQUESTS",
            "rollout.min_requests",
        )
    return RolloutSpec(
        candidate_version=candidate_version,
        strategy=strategy,
        steps=_steps(strategy, steps),
        split=_split(strategy, split),
        shadow_fraction=_fraction(strategy, shadow_fraction),
        step_duration_seconds=seconds or DEFAULT_STEP_SECONDS,
        min_requests=min_requests or DEFAULT_MIN_REQUESTS,
        guards=check_guards(guards, "rollout.guards"),
    )
