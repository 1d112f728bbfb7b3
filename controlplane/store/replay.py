"""Whether the resource a replayed request wrote is still the one under its name.

A request id keeps the name of the resource its request wrote, not the resource itself. When
that resource's model, deployment or policy is deleted and then created again under the same
id, the name now belongs to another resource: a replay must answer NOT_FOUND rather than that
other resource (AIP-155 replays what the first request did, never something else).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, SQLModel

from controlplane.store.convert import utc
from controlplane.store.deployment_tables import DeploymentRow
from controlplane.store.tables import ModelRow, PolicyRow
from modelplane.errors import NotFound

#: The collections whose resources are created and deleted as a whole, with all that lies
#: under their names (a model's versions, aliases, evaluations, gate decisions, approvals).
_ROOTS: dict[str, type[SQLModel]] = {
    "models": ModelRow,
    "deployments": DeploymentRow,
    "policies": PolicyRow,
}

#: The NOT_FOUND reason of each kind of resource, by the collection that names it.
_REASONS = {
    "models": "MODEL_NOT_FOUND",
    "versions": "VERSION_NOT_FOUND",
    "aliases": "ALIAS_NOT_FOUND",
    "evaluations": "EVALUATION_NOT_FOUND",
    "gateDecisions": "GATE_DECISION_NOT_FOUND",
    "approvals": "APPROVAL_NOT_FOUND",
    "deployments": "DEPLOYMENT_NOT_FOUND",
    "policies": "POLICY_NOT_FOUND",
}


def check_replayed(
    session: Session, method: str, request_id: str, resource: str, made: datetime | None
) -> None:
    """NOT_FOUND when ``resource``, which the request under ``request_id`` wrote at ``made``,
    lies under a model, deployment or policy created after that: the one it wrote was deleted
    since, and what has its name now is another.

    A Delete method's replay answers nothing about the resource, so it is not checked: the
    request deleted what it deleted, whatever was created under the name afterwards. A
    resource deleted and not created again is left to the service, whose lookup finds nothing.
    """
    if made is None or method.startswith("Delete"):
        return
    parts = resource.split("/")
    table = _ROOTS.get(parts[0]) if len(parts) >= 2 else None
    if table is None:
        return
    root = session.get(table, parts[1])
    if root is None or utc(root.create_time) <= utc(made):  # type: ignore[attr-defined]
        return
    collection = parts[-2] if len(parts) % 2 == 0 else parts[0]
    raise NotFound(
        f"{resource}, which request_id {request_id} wrote, no longer exists: "
        f"{parts[0]}/{parts[1]} was deleted since and created again, and what has that name now "
        "is another resource; the request is not applied to it (send a new request id to do so)",
        reason=_REASONS.get(collection, "RESOURCE_NOT_FOUND"),
        metadata={"resource": resource},
    )
