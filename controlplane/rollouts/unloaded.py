"""Replicas that cannot load a rollout's candidate.

A managed sidecar that cannot load the candidate (or shadow) version of its desired state
serves the champion alone and says so in every report (``unloaded_versions``) while it keeps
retrying. The control plane keeps, with the rollout's stored evidence, each replica whose
latest report says the candidate is unloaded (the deployment's row lock, taken by every
report, keeps two reports from overwriting each other's view), records a ``candidate_unloaded``
rollout event when a replica starts saying so and ``candidate_loaded`` when it stops, and a
step or phase does not move while any replica is in that state (see
:func:`controlplane.rollouts.steps.judge_step`). A replica that stops reporting (no report for
the latest window's age) holds nothing, as it adds nothing to the latest window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controlplane.domain.deployments import Rollout, UnloadedCandidate, WindowReport
from controlplane.store import deployment_json

#: Longest sidecar error text kept (ONNX Runtime's messages can run long).
MAX_ERROR = 500


@dataclass(frozen=True)
class Change:
    """A replica starting or stopping to report the candidate unloaded (an event to record)."""

    action: str
    reason: str


def stored(evidence_json: dict[str, Any] | None) -> tuple[UnloadedCandidate, ...]:
    """The replicas kept in a rollout's stored evidence (its JSON)."""
    return deployment_json.unloaded((evidence_json or {}).get("unloaded"))


def track(
    before: tuple[UnloadedCandidate, ...],
    report: WindowReport,
    r: Rollout,
    now: datetime,
    max_age: timedelta,
) -> tuple[tuple[UnloadedCandidate, ...], list[Change]]:
    """The replicas that cannot load ``r``'s candidate after ``report``, and the changes."""
    kept = {
        u.replica: u
        for u in before
        if u.version == r.candidate_version and u.last_seen >= now - max_age
    }
    changes = []
    previous = kept.pop(report.replica, None)
    failed = next((u for u in report.unloaded if u.version == r.candidate_version), None)
    if failed is not None:
        error = failed.error[:MAX_ERROR]
        since = previous.since if previous is not None else now
        kept[report.replica] = UnloadedCandidate(
            report.replica, r.candidate_version, error, since, now
        )
        if previous is None:
            changes.append(
                Change(
                    "candidate_unloaded",
                    f"replica {report.replica} could not load candidate version "
                    f"{r.candidate_version} ({error or 'no reason given'}); it serves the "
                    "champion alone, and the rollout will not advance or promote until it "
                    "loads the candidate",
                )
            )
    elif previous is not None:
        changes.append(
            Change(
                "candidate_loaded",
                f"replica {report.replica} loaded candidate version {r.candidate_version} "
                f"(it could not since {previous.since.isoformat()})",
            )
        )
    return tuple(kept[k] for k in sorted(kept)), changes


def describe(unloaded: tuple[UnloadedCandidate, ...]) -> str:
    """Why a complete step or phase is held, for its evidence."""
    who = "; ".join(f"replica {u.replica} ({u.error or 'no reason given'})" for u in unloaded)
    version = unloaded[0].version if unloaded else 0
    return f"held: candidate version {version} is not loaded on {who}"
