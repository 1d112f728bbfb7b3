"""Models and aliases."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from controlplane.auth.policy import listed_models
from controlplane.domain import Alias, AliasEvent, Model, VersionState
from controlplane.names import (
    check_id,
    check_labels,
    check_text,
    parse_alias,
    parse_model,
    parse_version,
)
from controlplane.services.filters import masked_changes, parse_filter, parse_order
from controlplane.store import Store, Tx
from controlplane.store.convert import alias_as_set
from controlplane.store.deployment_repos import Deployments
from controlplane.store.governance_repos import Governance
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import stale_etag
from controlplane.store.tables import ModelRow
from modelplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from modelplane.server.context import RequestContext, current_context

MODEL_UPDATE_PATHS = ("description", "labels", "intended_use", "limitations")


def model_not_found(model_id: str) -> NotFound:
    return NotFound(f"model models/{model_id} does not exist", reason="MODEL_NOT_FOUND")


def require_model(tx: Tx, model_id: str) -> Model:
    model = tx.models.get(model_id)
    if model is None:
        raise model_not_found(model_id)
    return model


def lock_model(tx: Tx, model_id: str) -> None:
    """Hold ``model_id``'s row until the transaction ends; NOT_FOUND when it is gone.

    Writes that make a deployment or a rollout use a model's versions, and writes that remove
    versions or the model, take this lock first, so on PostgreSQL neither can commit without
    seeing the other (SQLite runs one write at a time).
    """
    if tx.models.row(model_id, for_update=True) is None:
        raise model_not_found(model_id)


def named_deployments(deployment_ids: list[str], shown: int = 10) -> str:
    """``deployments/a, deployments/b`` for an error message, cut after ``shown`` names."""
    names = ", ".join(f"deployments/{d}" for d in deployment_ids[:shown])
    more = len(deployment_ids) - shown
    return f"{names} and {more} more" if more > 0 else names


class ModelService:
    """Create, read, update and delete models; move aliases with history."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        ctx: RequestContext,
        model_id: str,
        *,
        description: str = "",
        labels: dict[str, str] | None = None,
        intended_use: str = "",
        limitations: str = "",
        request_id: str = "",
    ) -> Model:
        check_id(model_id, "model id", "model_id")
        labels = check_labels(labels or {}, "model.labels")
        check_text(description, "description", field="model.description")
        check_text(intended_use, "intended_use", field="model.intended_use")
        check_text(limitations, "limitations", field="model.limitations")
        request = {
            "model_id": model_id,
            "description": description,
            "labels": labels,
            "intended_use": intended_use,
            "limitations": limitations,
        }
        with self.store.write(ctx, "CreateModel", request_id, request=request) as tx:
            if tx.replay is not None:
                return require_model(tx, parse_model(tx.replay))
            if tx.models.get(model_id) is not None:
                raise AlreadyExists(
                    f"model models/{model_id} already exists", reason="MODEL_EXISTS"
                )
            model = tx.models.add(
                ModelRow(
                    id=model_id,
                    description=description,
                    labels=labels,
                    intended_use=intended_use,
                    limitations=limitations,
                    created_by=ctx.principal,
                    create_time=tx.now,
                    update_time=tx.now,
                )
            )
            tx.record("CreateModel", model.name, None, model)
            return model

    def get(self, name: str) -> Model:
        model_id = parse_model(name)
        with self.store.read() as tx:
            return require_model(tx, model_id)

    def list_models(
        self,
        *,
        filter: str = "",
        order_by: str = "",
        page_size_: int = 0,
        page_token: str = "",
        ctx: RequestContext | None = None,
    ) -> tuple[list[Model], str]:
        """A page of models and the next page's token ("" at the end). A caller (``ctx``, by
        default the current call's) whose roles hold only on some models is shown those alone,
        selected in the query: its page holds up to ``page_size_`` of them and its token
        names one of them."""
        visible = listed_models(ctx or current_context())
        terms = parse_filter(filter)
        order, desc = parse_order(order_by, ("name", "create_time", "update_time"), "name")
        query = {"list": "models", "filter": filter, "order_by": order_by}
        after = decode(page_token, query)
        limit = page_size(page_size_)
        if terms.matches_nothing:
            return [], ""
        with self.store.read() as tx:
            models, next_key = tx.models.page(terms.labels, order, desc, after, limit, visible)
        return models, encode(query, next_key) if next_key else ""

    def update(
        self,
        ctx: RequestContext,
        name: str,
        etag: str,
        paths: list[str],
        values: Mapping[str, object],
        request_id: str = "",
    ) -> Model:
        model_id = parse_model(name, "model.name")
        changes = masked_changes(paths, values, MODEL_UPDATE_PATHS, resource="model", implicit=True)
        request = {"name": name, "etag": etag, "changes": changes}
        with self.store.write(ctx, "UpdateModel", request_id, request=request) as tx:
            # Locked, then read: no other write can commit between the etag check and the
            # update. The check is made here, as the repository's would compare an etag of the
            # revision alone, which a model deleted and created again under its id repeats.
            lock_model(tx, model_id)
            before = require_model(tx, model_id)
            if tx.replay is not None:
                return before
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            after = tx.models.update(model_id, "", changes, tx.now)
            tx.record("UpdateModel", after.name, before, after)
            return after

    def delete(
        self,
        ctx: RequestContext,
        name: str,
        *,
        etag: str = "",
        force: bool = False,
        request_id: str = "",
    ) -> None:
        model_id = parse_model(name)
        request = {"name": name, "etag": etag, "force": force}
        with self.store.write(ctx, "DeleteModel", request_id, request=request) as tx:
            if tx.replay is not None:
                return
            lock_model(tx, model_id)
            before = require_model(tx, model_id)
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            # Checked even with force: a deployment left behind would keep telling sidecars to
            # serve versions that no longer exist, or another model's, should the id be reused.
            deployments = Deployments(tx.session).for_model(model_id)
            if deployments:
                raise FailedPrecondition(
                    f"model {before.name} is served by {named_deployments(deployments)}; "
                    "delete those deployments first (force does not override this)",
                    reason="MODEL_HAS_DEPLOYMENTS",
                    metadata={"deployments": ",".join(deployments)},
                )
            count = tx.versions.count(model_id)
            if count and not force:
                raise FailedPrecondition(
                    f"model {before.name} still has {count} version(s) (archived ones count "
                    "too); pass force to delete them and the model's aliases with it",
                    reason="MODEL_HAS_VERSIONS",
                )
            # A model created later under this id inherits nothing: no alias or alias history
            # (as_of would answer its own versions), no evaluations, gate decisions or
            # approvals (a new version 1 would meet a promotion policy with the old one's).
            tx.aliases.delete_all(model_id)
            Governance(tx.session).delete_model_records(model_id)
            tx.versions.delete_all(model_id)
            tx.models.delete(model_id)
            tx.record("DeleteModel", before.name, before, None)

    # Aliases ---------------------------------------------------------------------------------

    def set_alias(
        self,
        ctx: RequestContext,
        name: str,
        version_name: str,
        reason: str = "",
        request_id: str = "",
        etag: str = "",
    ) -> Alias:
        """Point alias ``name`` at ``version_name``; with ``etag``, only while the alias is
        still as read (it exists and has not moved since)."""
        model_id, alias = parse_alias(name)
        ref = parse_version(version_name, field="version")
        if ref.model_id != model_id:
            raise InvalidArgument(
                f"version {version_name} belongs to another model than alias {name}",
                reason="MODEL_MISMATCH",
                metadata={"field": "version"},
            )
        check_text(reason, "reason", 2000, field="reason")
        request = {"name": name, "version": version_name, "reason": reason, "etag": etag}
        with self.store.write(ctx, "SetAlias", request_id, request=request) as tx:
            # The model's row lock first: concurrent alias writes, archiving and DeleteModel
            # take turns, and each reads what the one before it committed.
            lock_model(tx, model_id)
            if tx.replay is not None:
                # The alias as this request set it, even if it has moved since; NOT_FOUND once
                # it was deleted, even if it was set again since (that alias is another one).
                assert tx.replay_time is not None
                event = tx.aliases.as_of(model_id, alias, tx.replay_time)
                if (
                    event is None
                    or event.version is None
                    or tx.aliases.deleted_since(model_id, alias, tx.replay_time)
                ):
                    raise NotFound(
                        f"alias {name} set by request_id {request_id} no longer exists",
                        reason="ALIAS_NOT_FOUND",
                    )
                return alias_as_set(
                    model_id, alias, event.version, event.actor, event.reason, event.time
                )
            # Stamped now that the lock is held, and after the model's last alias event: alias
            # history runs forward in time, so as_of answers what the alias pointed to then.
            tx.restamp(tx.aliases.next_event_time(model_id))
            before = tx.aliases.get(model_id, alias)
            if etag and (before is None or before.etag != etag):
                raise stale_etag(name)
            assert ref.version is not None
            version = tx.versions.get(model_id, ref.version)
            if version is None:
                raise NotFound(f"version {version_name} does not exist", reason="VERSION_NOT_FOUND")
            if version.state is VersionState.ARCHIVED:
                raise FailedPrecondition(
                    f"version {version_name} is archived and cannot be aliased",
                    reason="VERSION_ARCHIVED",
                )
            from controlplane.services.gates import require_gate_passed

            require_gate_passed(tx, model_id, ref.version, alias)
            after, _previous = tx.aliases.set(
                model_id, alias, ref.version, ctx.principal, reason, tx.now
            )
            tx.record("SetAlias", after.name, before, after)
            return after

    def get_alias(self, name: str, as_of: datetime | None = None) -> Alias:
        model_id, alias = parse_alias(name)
        with self.store.read() as tx:
            require_model(tx, model_id)
            if as_of is None:
                got = tx.aliases.get(model_id, alias)
                if got is None:
                    raise NotFound(f"alias {name} does not exist", reason="ALIAS_NOT_FOUND")
                return got
            event = tx.aliases.as_of(model_id, alias, as_of)
            if event is None or event.version is None:
                raise NotFound(
                    f"alias {name} pointed nowhere at {as_of.isoformat()}", reason="ALIAS_NOT_FOUND"
                )
            return alias_as_set(
                model_id, alias, event.version, event.actor, event.reason, event.time
            )

    def list_aliases(self, parent: str) -> list[Alias]:
        model_id = parse_model(parent, "parent")
        with self.store.read() as tx:
            require_model(tx, model_id)
            return tx.aliases.all(model_id)

    def delete_alias(
        self,
        ctx: RequestContext,
        name: str,
        reason: str = "",
        request_id: str = "",
        etag: str = "",
    ) -> None:
        """Remove alias ``name``; with ``etag``, only while it is still as read."""
        model_id, alias = parse_alias(name)
        check_text(reason, "reason", 2000, field="reason")
        request = {"name": name, "reason": reason, "etag": etag}
        with self.store.write(ctx, "DeleteAlias", request_id, request=request) as tx:
            if tx.replay is not None:
                return
            lock_model(tx, model_id)  # as in set_alias: a concurrent delete has committed
            before = tx.aliases.get(model_id, alias)
            if before is None:
                raise NotFound(f"alias {name} does not exist", reason="ALIAS_NOT_FOUND")
            if etag and before.etag != etag:
                raise stale_etag(name)
            tx.restamp(tx.aliases.next_event_time(model_id))  # as in set_alias
            tx.aliases.delete(model_id, alias, ctx.principal, reason, tx.now)
            tx.record("DeleteAlias", name, before, None)

    def alias_history(
        self, name: str, page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[AliasEvent], str]:
        if "/aliases/" in name:
            model_id, alias = parse_alias(name)
            which: str | None = alias
        else:
            model_id, which = parse_model(name), None
        query = {"list": "aliasHistory", "name": name}
        after = decode(page_token, query)
        with self.store.read() as tx:
            require_model(tx, model_id)
            events, next_key = tx.aliases.history(model_id, which, after, page_size(page_size_))
        return events, encode(query, next_key) if next_key else ""
