"""The authorization step: checks a call against :data:`PERMISSIONS` and the caller's grants.

A grant holds roles on every model, or only on the models it names. The model a request is
about is read from its deserialised fields (``name``, ``parent``, ``target``, ``resource``,
``version``, ``model_id``, ``model.name``, ``version.name``, ``deployment.model``); a
deployment (``deployments/{id}``, or ``deployment.name``) is about the model it serves, which
is fixed at its creation and looked up in the store when the caller's grants are scoped. The
request context handed on carries the roles that hold for that model, which is what approvals
record and policies check.

A list spanning models (LISTED) shows a scoped caller the entries of its models only. Models,
deployments and operations are selected in the list's query (:func:`listed_models` says which
models), so that a page holds up to its size of visible entries and its next-page token
(readable base64 JSON) resumes after a visible one; the response filter set here drops what a
list did not select (audit events, still) and is otherwise a second guard.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from controlplane.auth.permissions import PERMISSIONS, READ, Rule, Scope
from modelplane.errors import PermissionDenied
from modelplane.server.context import Grant, RequestContext
from modelplane.server.interceptor import Authorization

_NAME_FIELDS = ("name", "parent", "target", "resource", "version")
_NESTED_FIELDS = ("model", "version", "deployment")
_DEPLOYMENTS = "deployments/"
_ACTED_ON = frozenset({"name", "parent"})

#: ``deployment id`` → the id of the model it serves, None when there is no such deployment.
DeploymentModels = Callable[[str], str | None]


def model_of(resource: str) -> str | None:
    """``models/fraud/versions/3`` → ``fraud``; None when ``resource`` names no model."""
    if not resource.startswith("models/"):
        return None
    rest = resource[len("models/") :]
    end = min((i for i in (rest.find("/"), rest.find("@")) if i >= 0), default=len(rest))
    return rest[:end] or None


def models_named(request: Message, deployment_models: DeploymentModels | None = None) -> set[str]:
    """The model ids a request names in its naming fields; with ``deployment_models``, also
    those of the deployments it names (a deployment that does not exist names none)."""
    out: set[str] = set()
    for resource, acted_on in _resources_named(request):
        model = model_of(resource)
        if model is None and acted_on and deployment_models is not None:
            deployment = deployment_of(resource)
            model = deployment_models(deployment) if deployment else None
        if model:
            out.add(model)
    if "model_id" in request.DESCRIPTOR.fields_by_name:
        model_id = getattr(request, "model_id", "")
        if model_id:
            out.add(model_id)
    return out


def deployment_of(resource: str) -> str | None:
    """``deployments/fraud-prod`` → ``fraud-prod``; None when ``resource`` names none."""
    if not resource.startswith(_DEPLOYMENTS):
        return None
    return resource[len(_DEPLOYMENTS) :].split("/", 1)[0] or None


def _resources_named(request: Message) -> list[tuple[str, bool]]:
    """What the naming fields hold, each with whether it names the resource the request acts
    on (``name``, ``parent``, ``deployment.name``): only there is a deployment resolved to its
    model. A gate's ``target`` may name a deployment not created yet (its model is named by the
    version), and ``resource`` filters audit events."""
    fields = request.DESCRIPTOR.fields_by_name
    names: list[tuple[str, bool]] = []
    for name in _NAME_FIELDS:
        f = fields.get(name)
        if f is not None and f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated:
            names.append((getattr(request, name), name in _ACTED_ON))
    for name in _NESTED_FIELDS:
        f = fields.get(name)
        if f is not None and f.type == FieldDescriptor.TYPE_MESSAGE and request.HasField(name):
            nested = getattr(request, name)
            if name == "deployment":
                names.append((nested.model, False))
                if "deployment_id" in fields:  # a create names its new deployment by id
                    continue
            names.append((getattr(nested, "name", ""), True))
    return names


def roles_on(grants: Iterable[Grant], model: str | None) -> set[str]:
    """Roles that hold on ``model``; with None, those that hold on every model."""
    out: set[str] = set()
    for g in grants:
        if not g.scoped or (model is not None and model in g.models):
            out.update(g.roles)
    return out


def listed_models(ctx: RequestContext, roles: Collection[str] = READ) -> frozenset[str] | None:
    """The models whose entries a list spanning models may show ``ctx``'s caller, who lists
    with one of ``roles`` (every LISTED RPC reads, :data:`READ`): None when such a role holds on
    every model, or when access control is off (no grants, not authenticated). An authenticated
    caller without grants sees none."""
    if not ctx.grants:
        return frozenset() if ctx.authenticated else None
    if roles_on(ctx.grants, None) & set(roles):
        return None
    return frozenset(m for g in ctx.grants if set(roles) & set(g.roles) for m in g.models)


def _short(method: str) -> str:
    return method.lstrip("/").rsplit(".", 1)[-1]


class PermissionPolicy:
    """An :data:`modelplane.server.interceptor.Authorizer` over a permission table.

    Until :meth:`find_deployments_with` gives it the store's lookup, no deployment counts as
    one of a scoped grant's models, so only unscoped grants allow requests about one."""

    def __init__(self, table: Mapping[str, Rule] = PERMISSIONS) -> None:
        self._table = dict(table)
        self._deployment_models: DeploymentModels | None = None

    def find_deployments_with(self, deployment_models: DeploymentModels) -> None:
        """Scoped grants cover the deployments of their models, found with this lookup."""
        self._deployment_models = deployment_models

    def __call__(self, ctx: RequestContext, method: str, request: Any) -> Authorization:
        rule = self._table.get(method)
        if rule is None:
            raise PermissionDenied(
                f"{_short(method)} is not in the control plane's permission table",
                reason="METHOD_NOT_PERMITTED",
            )
        held = _all_roles(ctx.grants)
        if not held & rule.roles:
            raise _role_required(ctx, method, rule, held)
        unscoped = roles_on(ctx.grants, None)
        if rule.scope is Scope.SHARED:
            return Authorization(replace(ctx, roles=tuple(sorted(held))))
        if rule.scope is Scope.GLOBAL:
            if not unscoped & rule.roles:
                raise PermissionDenied(
                    f"{_short(method)} acts on the whole control plane; {ctx.principal}'s "
                    f"{_names(rule.roles & held)} role holds only on some models",
                    reason="UNSCOPED_ROLE_REQUIRED",
                    metadata={"required_roles": ",".join(sorted(rule.roles))},
                )
            return Authorization(replace(ctx, roles=tuple(sorted(unscoped))))
        named: set[str] = set()
        if isinstance(request, Message):
            # Only a scoped grant needs a deployment's model (a store read): with an unscoped
            # one, every model is covered.
            if any(g.scoped for g in ctx.grants):
                # Without a lookup no deployment is known to be one of the scoped models.
                lookup = self._deployment_models or (lambda _: None)
                found: dict[str, str | None] = {}

                def model_of_deployment(deployment: str) -> str | None:
                    if deployment not in found:
                        found[deployment] = lookup(deployment)
                    return found[deployment]

                named = models_named(request, model_of_deployment)
                _deployments_covered(ctx, method, rule, found)
            else:
                named = models_named(request)
        if rule.scope is Scope.MODEL or named:
            roles = _covering(ctx, method, rule, named)
            if rule.scope is Scope.MODEL:
                return Authorization(replace(ctx, roles=tuple(sorted(roles))))
        if unscoped & rule.roles:
            return Authorization(replace(ctx, roles=tuple(sorted(unscoped))))
        allowed = set(listed_models(ctx, rule.roles) or ())
        if rule.scope is Scope.LISTED:
            return Authorization(
                replace(ctx, roles=tuple(sorted(held))), _listed_filter(rule, allowed)
            )
        check = OperationScope(ctx, method, rule, allowed)
        return Authorization(replace(ctx, roles=tuple(sorted(held)), resource_check=check), check)


def _covering(ctx: RequestContext, method: str, rule: Rule, named: set[str]) -> set[str]:
    """Roles holding on every model the request names; refuses when a model is not covered."""
    if not named:
        roles = roles_on(ctx.grants, None)
        if not roles & rule.roles:
            raise PermissionDenied(
                f"this {_short(method)} request names no model, and {ctx.principal}'s roles "
                f"hold only on models {_names(_scoped_models(ctx.grants))}",
                reason="MODEL_NOT_IN_SCOPE",
                metadata={"required_roles": ",".join(sorted(rule.roles))},
            )
        return roles
    covered: set[str] | None = None
    for model in sorted(named):
        roles = roles_on(ctx.grants, model)
        if not roles & rule.roles:
            raise PermissionDenied(
                f"{ctx.principal} may not call {_short(method)} on model {model!r}: its "
                f"{_names(rule.roles & _all_roles(ctx.grants))} role holds only on models "
                f"{_names(_scoped_models(ctx.grants))}",
                reason="MODEL_NOT_IN_SCOPE",
                metadata={"model": model, "required_roles": ",".join(sorted(rule.roles))},
            )
        covered = roles if covered is None else covered & roles
    return covered or set()


def _deployments_covered(
    ctx: RequestContext, method: str, rule: Rule, found: Mapping[str, str | None]
) -> None:
    """Refuses a request about a deployment of a model the caller's roles do not hold on, or
    about one that does not exist: both get the same answer, so that a scoped caller learns
    neither which deployments exist nor which models they serve."""
    for deployment, model in sorted(found.items(), key=lambda item: item[0]):
        # One that does not exist is for an unscoped grant to hear about (NOT_FOUND).
        if not roles_on(ctx.grants, model) & rule.roles:
            raise PermissionDenied(
                f"{ctx.principal} may not call {_short(method)} on deployments/{deployment}: "
                f"it is no deployment of the models its "
                f"{_names(rule.roles & _all_roles(ctx.grants))} role holds on "
                f"({_names(_scoped_models(ctx.grants))})",
                reason="MODEL_NOT_IN_SCOPE",
                metadata={
                    "deployment": f"deployments/{deployment}",
                    "required_roles": ",".join(sorted(rule.roles)),
                },
            )


def _listed_filter(rule: Rule, allowed: set[str]) -> Callable[[Any], Any]:
    """Drops the entries of a list response that are not about a model the caller may see:
    an entry about no model (a blob's upload, a deployment, a policy) is dropped too, since
    what it names may belong to models outside the caller's scope.

    Models, deployments and operations are selected for the caller in their lists' queries
    (:func:`listed_models`), so nothing of theirs is dropped here. Whatever is dropped leaves
    its page short, and that page's next-page token was made without regard to it."""

    def keep_visible(response: Any) -> Any:
        entries = getattr(response, rule.listed)
        kept = [e for e in entries if model_of(getattr(e, rule.key)) in allowed]
        if len(kept) != len(entries):
            del entries[:]
            entries.extend(kept)
        return response

    return keep_visible


class OperationScope:
    """The resource check of an operation call (Get, Wait, Cancel) by a caller whose roles hold
    only on some models: refuses an operation about a model outside them.

    A missing operation gets the same refusal (:meth:`refusal`, which the operation service
    raises in place of NOT_FOUND), and the refusal names only the operation the caller asked
    for, never its target, as for a deployment: the caller learns neither which operations
    exist nor what they are about."""

    def __init__(
        self, ctx: RequestContext, method: str, rule: Rule, allowed: Collection[str]
    ) -> None:
        self._ctx = ctx
        self._method = method
        self._rule = rule
        self._allowed = set(allowed)

    def __call__(self, operation: Any) -> Any:
        if not _visible(operation.target, self._allowed):
            raise self.refusal(operation.name)
        return operation

    def refusal(self, name: str) -> PermissionDenied:
        """The refusal of operation ``name`` (``operations/{id}``), hidden or missing alike."""
        ctx, rule = self._ctx, self._rule
        return PermissionDenied(
            f"{ctx.principal} may not call {_short(self._method)} on {name}: it is no "
            f"operation of the models its {_names(rule.roles & _all_roles(ctx.grants))} role "
            f"holds on ({_names(_scoped_models(ctx.grants))})",
            reason="MODEL_NOT_IN_SCOPE",
            metadata={"operation": name, "required_roles": ",".join(sorted(rule.roles))},
        )


def _visible(resource: str, allowed: set[str]) -> bool:
    model = model_of(resource)
    return model is None or model in allowed


def _all_roles(grants: Iterable[Grant]) -> set[str]:
    return {r for g in grants for r in g.roles}


def _scoped_models(grants: Iterable[Grant]) -> set[str]:
    return {m for g in grants for m in g.models}


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "(none)"


def _role_required(
    ctx: RequestContext, method: str, rule: Rule, held: set[str]
) -> PermissionDenied:
    needed = ",".join(sorted(rule.roles))
    return PermissionDenied(
        f"{_short(method)} needs one of the roles {needed.replace(',', ', ')}; "
        f"{ctx.principal} holds {_names(held)}",
        reason="ROLE_REQUIRED",
        metadata={"required_roles": needed, "method": method.lstrip("/")},
    )
