"""Names of evaluation and governance resources (AIP-122) and policy targets."""

from __future__ import annotations

import uuid

from controlplane.names import check_id, parse_version
from controlplane.store.governance_repos import ALL_DEPLOYMENTS
from modelplane.errors import InvalidArgument


def parse_version_number(name: str, *, allow_alias: bool = False) -> tuple[str, int | None, str]:
    """``models/{m}/versions/{v}`` → (model id, version, ""); with ``allow_alias`` also
    ``models/{m}@{alias}`` → (model id, None, alias)."""
    ref = parse_version(name, allow_alias=allow_alias)
    return ref.model_id, ref.version, ref.alias or ""


def parse_child(name: str, collection: str) -> tuple[str, int, str]:
    """``models/{m}/versions/{v}/{collection}/{id}`` → (model id, version, id)."""
    expected = f"models/{{model}}/versions/{{version}}/{collection}/{{id}}"
    parts = name.split("/") if name else []
    if len(parts) != 6 or parts[4] != collection:
        raise InvalidArgument(
            f"resource name {name[:80]!r} is invalid; expected {expected}", reason="INVALID_NAME"
        )
    model_id, version, _ = parse_version_number("/".join(parts[:4]))
    assert version is not None
    return model_id, version, check_id(parts[5], f"{collection} id")


def parse_policy(name: str) -> str:
    """``policies/{policy}`` → policy id."""
    parts = name.split("/") if name else []
    if len(parts) != 2 or parts[0] != "policies":
        raise InvalidArgument(
            f"resource name {name[:80]!r} is invalid; expected policies/{{policy}}",
            reason="INVALID_NAME",
        )
    return check_id(parts[1], "policy id")


def check_target(target: str, *, wildcard: bool = False) -> str:
    """The target of a gate decision or an approval: an alias name (``production``) or
    ``deployments/{deployment}``; with ``wildcard`` (the target of a policy) also
    ``deployments/*`` (:data:`~controlplane.store.governance_repos.ALL_DEPLOYMENTS`), which
    governs every deployment without a policy of its own."""
    forms = "an alias name such as 'production' or deployments/{deployment}"
    if wildcard:
        forms += ", or deployments/* for every deployment without a policy of its own"
    if not target:
        raise InvalidArgument(f"target is required: {forms}", reason="INVALID_TARGET")
    if target == ALL_DEPLOYMENTS:
        if wildcard:
            return target
        raise InvalidArgument(
            f"target {target!r} names no one deployment: gate decisions and approvals are for "
            "one alias or one deployment, deployments/{deployment}, also where the policy bound "
            "to deployments/* governs it",
            reason="INVALID_TARGET",
        )
    parts = target.split("/")
    ok = (len(parts) == 1) or (len(parts) == 2 and parts[0] == "deployments")
    if not ok:
        raise InvalidArgument(
            f"target {target[:80]!r} is invalid: use {forms}", reason="INVALID_TARGET"
        )
    check_id(parts[-1], "target")
    return target


def new_id(prefix: str) -> str:
    """A fresh resource id such as ``ev-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"
