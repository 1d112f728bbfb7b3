"""Policies: CEL rules bound to a target, versioned by revision.

A revision is a rule set: the policy's ``rules`` and ``target``. An update that changes either
makes a new revision; one that leaves both as they are (a new description, or the same rules
sent again) keeps the revision, so the gate decisions and approvals whose evidence names it
still stand. Every update changes the etag and is audited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sqlmodel import col, select

from controlplane.domain.governance import Policy
from controlplane.names import check_id, check_text
from controlplane.policy import (
    GATE_SCHEMA,
    POLICY_ELEMENT_FIELDS,
    POLICY_VARIABLES,
    check_rule,
    compile_rules,
)
from controlplane.services.filters import masked_changes
from controlplane.services.governance_names import check_target, parse_policy
from controlplane.store import Store, Tx, WriteTx
from controlplane.store.convert import utc
from controlplane.store.governance_repos import Governance, policy_etag
from controlplane.store.governance_repos import policy as policy_as_of
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import stale_etag
from controlplane.store.tables import PolicyRevisionRow, PolicyRow
from modelplane.errors import AlreadyExists, InvalidArgument, NotFound
from modelplane.server.context import RequestContext

POLICY_UPDATE_PATHS = ("rules", "description", "target")
MAX_RULES = 100


def check_rules(rules: Sequence[str]) -> list[str]:
    """Rules that compile against the gate variables and can yield true or false (see
    :func:`controlplane.policy.check_rule`); INVALID_ARGUMENT (``INVALID_POLICY_RULE``) with
    the position otherwise."""
    if not rules:
        raise InvalidArgument(
            "a policy needs at least one rule (a CEL expression)", reason="EMPTY_POLICY"
        )
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"at most {MAX_RULES} rules are allowed", reason="TOO_MANY_RULES")
    compiled = compile_rules(
        list(rules), variables=POLICY_VARIABLES, element_fields=POLICY_ELEMENT_FIELDS
    )
    for rule in compiled:
        check_rule(rule, GATE_SCHEMA)
    return list(rules)


def require_policy(tx: Tx, policy_id: str, revision: int = 0) -> Policy:
    got = Governance(tx.session).get_policy(policy_id, revision)
    if got is None:
        which = f" revision {revision}" if revision else ""
        raise NotFound(
            f"policy policies/{policy_id}{which} does not exist", reason="POLICY_NOT_FOUND"
        )
    return got


def _replayed(
    tx: WriteTx, policy_id: str, request_id: str, changes: Mapping[str, object] | None = None
) -> Policy:
    """The policy as the request being replayed answered it (AIP-155), with the etag it
    answered, even when later updates have moved the policy on: the revision current when it
    was made, as that revision was made, or, for an update that kept the revision (``changes``
    are its changes), with the description it set. NOT_FOUND when the policy was deleted
    since."""
    assert tx.replay_time is not None
    made_at = utc(tx.replay_time)
    revisions = tx.session.exec(
        select(PolicyRevisionRow).where(col(PolicyRevisionRow.policy_id) == policy_id)
    ).all()
    made = max(
        (r for r in revisions if utc(r.time) <= made_at), key=lambda r: r.revision, default=None
    )
    current = Governance(tx.session).policy_row(policy_id)
    if made is None or current is None or utc(current.create_time) > utc(made.time):
        which = f" revision {made.revision}" if made is not None else ""
        raise NotFound(
            f"policy policies/{policy_id}{which}, which request_id {request_id} made, was "
            "deleted since",
            reason="POLICY_NOT_FOUND",
        )
    answered = policy_as_of(made, current)
    if utc(current.update_time) == made_at:
        # Nothing changed the policy since: it is as this request left it.
        answered = policy_as_of(current, current)
    elif utc(made.time) < made_at:
        # An update that kept the revision, and made no record of its own: the revision as it
        # was made, with the description this update set (or, when it set none, the one the
        # revision was made with).
        description = (changes or {}).get("description", answered.description)
        answered = dataclasses.replace(
            answered,
            description=str(description),
            updated_by=tx.ctx.principal,
            update_time=made_at,
        )
    etag = policy_etag(policy_id, made.revision, current.create_time, made_at)
    return dataclasses.replace(answered, etag=etag)


def _target_free(tx: Tx, target: str, policy_id: str) -> None:
    bound = Governance(tx.session).policy_bound_to(target)
    if bound is not None and bound.id != policy_id:
        raise AlreadyExists(
            f"target {target!r} is already governed by {bound.name}; update that policy or "
            "delete it first",
            reason="TARGET_HAS_POLICY",
        )


def _id_and_target_free(tx: Tx, policy_id: str, target: str) -> None:
    if Governance(tx.session).policy_row(policy_id) is not None:
        raise AlreadyExists(f"policy policies/{policy_id} already exists", reason="POLICY_EXISTS")
    _target_free(tx, target, policy_id)


class PolicyService:
    """Create, read, update (a change of rules or target as a new revision) and delete
    policies."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        ctx: RequestContext,
        policy_id: str,
        target: str,
        rules: Sequence[str],
        description: str = "",
        request_id: str = "",
    ) -> Policy:
        check_id(policy_id, "policy id")
        check_target(target, wildcard=True)
        rules = check_rules(rules)
        check_text(description, "description")
        request = {
            "policy_id": policy_id,
            "target": target,
            "rules": list(rules),
            "description": description,
        }
        with self.store.write(ctx, "CreatePolicy", request_id, request=request) as tx:
            if tx.replay is not None:
                return _replayed(tx, parse_policy(tx.replay), request_id)
            gov = Governance(tx.session)
            _id_and_target_free(tx, policy_id, target)
            policy = gov.add_policy(
                PolicyRow(
                    id=policy_id,
                    description=description,
                    target=target,
                    rules=rules,
                    created_by=ctx.principal,
                    updated_by=ctx.principal,
                    create_time=tx.now,
                    update_time=tx.now,
                )
            )
            if policy is None:
                # A create or update that committed after the checks took the id or the target:
                # checked again, they now see it and say which.
                _id_and_target_free(tx, policy_id, target)
                raise AlreadyExists(
                    f"policy policies/{policy_id} or its target {target!r} was taken by a "
                    "concurrent request; retry",
                    reason="POLICY_EXISTS",
                )
            tx.record("CreatePolicy", policy.name, None, policy)
            return policy

    def get(self, name: str, revision: int = 0) -> Policy:
        policy_id = parse_policy(name)
        if revision < 0:
            raise InvalidArgument("revision must not be negative", reason="INVALID_REVISION")
        with self.store.read() as tx:
            return require_policy(tx, policy_id, revision)

    def list_policies(self, page_size_: int = 0, page_token: str = "") -> tuple[list[Policy], str]:
        query = {"list": "policies"}
        after = decode(page_token, query)
        with self.store.read() as tx:
            items, next_key = Governance(tx.session).policies_page(after, page_size(page_size_))
        return items, encode(query, next_key) if next_key else ""

    def update(
        self,
        ctx: RequestContext,
        name: str,
        etag: str,
        paths: list[str],
        values: Mapping[str, object],
        request_id: str = "",
    ) -> Policy:
        policy_id = parse_policy(name)
        changes = masked_changes(
            paths,
            values,
            POLICY_UPDATE_PATHS,
            {
                "rules": lambda v: check_rules(list(v)),
                "target": lambda v: check_target(str(v), wildcard=True),
            },
        )
        request = {"name": name, "etag": etag, "changes": changes}
        with self.store.write(ctx, "UpdatePolicy", request_id, request=request) as tx:
            if tx.replay is not None:
                return _replayed(tx, policy_id, request_id, changes)
            # Locked, then read: a concurrent update waits for this one (a blind update cannot
            # lose a race it never saw), and the etag is checked against the committed row.
            gov = Governance(tx.session)
            gov.policy_row(policy_id, for_update=True)
            # The time is taken again under the lock, after the last revision's: an update that
            # waited for the lock would otherwise carry an earlier time than the revision it
            # follows, and a replay (which finds its revision by time) would answer that one.
            tx.restamp(gov.next_revision_time(policy_id))
            before = require_policy(tx, policy_id)
            if "target" in changes:
                _target_free(tx, str(changes["target"]), policy_id)
            after = gov.update_policy(policy_id, etag, changes, ctx.principal, tx.now)
            if after is None:
                # Only the new target can collide: a policy that committed after the check took
                # it, and the check, made again, names that policy.
                _target_free(tx, str(changes["target"]), policy_id)
                raise AlreadyExists(
                    f"target {changes['target']!r} was taken by a concurrent request; retry",
                    reason="TARGET_HAS_POLICY",
                )
            tx.record("UpdatePolicy", after.name, before, after)
            return after

    def delete(self, ctx: RequestContext, name: str, etag: str = "", request_id: str = "") -> None:
        policy_id = parse_policy(name)
        request = {"name": name, "etag": etag}
        with self.store.write(ctx, "DeletePolicy", request_id, request=request) as tx:
            if tx.replay is not None:
                return
            # Locked, then read, as in update: an update committed meanwhile is seen, so an
            # etag of the revision before it no longer matches.
            gov = Governance(tx.session)
            gov.policy_row(policy_id, for_update=True)
            before = require_policy(tx, policy_id)
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            gov.delete_policy(policy_id, before.revision)
            tx.record("DeletePolicy", before.name, before, None)
